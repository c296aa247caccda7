"""The published chat templates of tests/server/templates (README.md there names each one's source)."""

from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
QWEN25, QWEN3 = "Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B"
LLAMA32, MISTRAL = "meta-llama-Llama-3.2-3B-Instruct", "mistralai-Mistral-Nemo-Instruct-2407"
GEMMA4 = "google-gemma-4"  # Gemma 4's own call syntax; every property needs a "type" (its template reads it)
# The markers of Gemma 4's template, control tokens of its vocabulary (a tiny checkpoint must have them too)
GEMMA4_CONTROL_TOKENS = ["<|turn>", "<turn|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                         "<tool_response|>", '<|"|>', "<|channel>", "<channel|>", "<|think|>"]
GPT_OSS = "openai-gpt-oss-120b"  # harmony: <|start|>ROLE<|channel|>...<|message|>...<|end|>
DEEPSEEK_R1 = "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"  # opens <think> in its generation prompt; renders no tools
# template -> (the format it must select, the text that ends an assistant turn in it)
FAMILIES = {QWEN25: ("hermes", "<|im_end|>\n"), QWEN3: ("hermes", "<|im_end|>\n"),
            LLAMA32: ("llama3-json", "<|eot_id|>"), MISTRAL: ("mistral", "</s>")}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city"]}}}


def template_source(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()
