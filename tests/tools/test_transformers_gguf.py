"""transformers_gguf.shared_parse: transformers' parses of one file served by one reader, and gguf left as it was."""

import gguf
import pytest
import transformers

from deeproots.transformers_gguf import shared_parse

pytestmark = pytest.mark.slow  # transformers and a parse of the default model's 49k-token vocabulary


def test_one_reader_serves_the_file_and_gguf_is_restored(smollm2_path, smollm2_gguf):
    original = gguf.GGUFReader, gguf.get_tensor_name_map
    with shared_parse(smollm2_path, smollm2_gguf) as reader:
        assert reader is smollm2_gguf and gguf.GGUFReader(str(smollm2_path)) is smollm2_gguf
        config = transformers.AutoConfig.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is name_map  # built once
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == original
    assert config.num_hidden_layers == smollm2_gguf.fields["llama.block_count"].contents() == 30
