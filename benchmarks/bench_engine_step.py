"""Where an engine decode step goes, outside HTTP: forward pass, sampling, text, hand-off to asyncio, the rest.

    python benchmarks/bench_engine_step.py [--batch 1,8] [--rounds 2] [--max-tokens 64]

Drives deeproots.engine directly (Engine.step() on this thread, as its own thread would) with B chat requests
as `deeproots bench-serve` sends them (its prompts, temperature 0.7, a seed each) and hands every event to an
asyncio loop running in another thread, through the server's LoopDispatcher. Only steps where all B sequences
decode are counted; the figures are medians over those steps (milliseconds). Batch sizes alternate round by round.
"""

import argparse
import asyncio
import statistics
import threading
import time
from collections import defaultdict

import deeproots
import deeproots.engine.engine as engine_module
import deeproots.generate as generate_module
from deeproots.engine import Engine, EngineConfig, GenerationRequest
from deeproots.sampling import SamplingParams
from deeproots.server.bench import PROMPTS
from deeproots.server.generation import LoopDispatcher

PARTS = ["forward_batch", "decode (sampling + text)", "  sampling (draw_batch)", "hand-off to the loop"]


class Timers:
    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self.on = False

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - start
        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    model = deeproots.load(args.model)
    timers = Timers()
    engine = Engine(model.loaded, EngineConfig(max_running=max(int(b) for b in args.batch.split(","))))
    launch = engine.runner.launch  # the pass in two halves (BatchRunner.launch): both timed
    engine.runner.launch = timers.wrap(PARTS[0], lambda *a: timers.wrap(PARTS[0], launch(*a)))
    engine_module.decode_batch = timers.wrap(PARTS[1], generate_module.decode_batch)
    generate_module.draw_batch = timers.wrap(PARTS[2], generate_module.draw_batch)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    dispatcher = LoopDispatcher(loop)
    dispatcher.dispatch = timers.wrap(PARTS[3], dispatcher.dispatch)

    def ids(question: str) -> list[int]:
        return model.apply_chat_template([{"role": "user", "content": question}], tokenize=True)

    def run(batch: int, seed: int) -> list[tuple[float, dict[str, float]]]:
        events: asyncio.Queue = asyncio.Queue()
        finished = threading.Event()

        async def consume() -> None:
            left = batch
            while left:
                event = await events.get()
                left -= isinstance(event, Exception) or event.finish_reason is not None
            finished.set()

        asyncio.run_coroutine_threadsafe(consume(), loop)
        for index in range(batch):
            params = SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=seed + index)
            request = GenerationRequest(ids(PROMPTS[index % len(PROMPTS)]), params, args.max_tokens,
                                        events.put_nowait, dispatcher=dispatcher)
            with engine._lock:  # submit() wants the engine's thread running; here this thread steps it
                engine.scheduler.submit(request)
        steps = []
        while engine.scheduler.running or engine.scheduler.waiting:
            running = engine.scheduler.running
            counted = len(running) == batch and not any(sequence.prefilling for sequence in running)
            before = dict(timers.totals)
            timers.on = counted
            start = time.perf_counter()
            engine.step()
            timers.on = False
            if counted:
                steps.append((time.perf_counter() - start,
                              {name: timers.totals[name] - before.get(name, 0.0) for name in PARTS}))
        finished.wait(30)
        return steps

    sizes = [int(b) for b in args.batch.split(",")]
    run(max(sizes), 0)  # warm-up
    results: dict[int, list] = {b: [] for b in sizes}
    for round_ in range(args.rounds):
        for b in sizes:
            results[b] += run(b, 100 * (round_ + 1))
    for b in sizes:
        steps = results[b]
        step = statistics.median(total for total, _ in steps)
        print(f"batch {b}: {len(steps)} decode steps, median step {step * 1e3:.2f} ms ({b / step:.0f} tokens/s)")
        for name in PARTS:
            print(f"   {name:<28} {statistics.median(parts[name] for _, parts in steps) * 1e3:7.3f} ms")
        rest = statistics.median(total - sum(v for k, v in parts.items() if not k.startswith(" "))
                                 for total, parts in steps)
        print(f"   {'rest (scheduler, plan)':<28} {rest * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
