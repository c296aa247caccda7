"""`python -m deeproots.parallel --model PATH ...`: a follower rank (launch.py spawns these; torchrun's ranks > 0 get
here through `deeproots serve|run|... --tp N`)."""

import argparse

from .launch import follow_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deeproots.parallel")
    parser.add_argument("--model", required=True)
    parser.add_argument("--ctx", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kv-type", default=None)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--tp-reduction", default="exact")
    args = parser.parse_args(argv)
    follow_main(args.model, context=args.ctx, threads=args.threads, kv_type=args.kv_type, reference=args.reference,
                tp_reduction=args.tp_reduction)


if __name__ == "__main__":
    main()
