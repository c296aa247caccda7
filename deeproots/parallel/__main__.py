"""`python -m deeproots.parallel --model PATH ...`: a follower rank (launch.py spawns these; torchrun's ranks > 0 get
here through `deeproots serve|run|... --tp N`)."""

import argparse
import os
import sys

from ..errors import DeeprootsError
from ..cli_options import layer_list
from .join import read_secret
from .launch import follow_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deeproots.parallel")
    parser.add_argument("--model", required=True)
    parser.add_argument("--ctx", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--kv-type", default=None)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--tp-reduction", default="exact")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--pp-split", type=layer_list, default=None)
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret-file", default=None, help="the group's shared secret")
    secret.add_argument("--secret-stdin", action="store_true", help="read it from stdin (launch.py's spawned ranks)")
    args = parser.parse_args(argv)
    try:
        secret = sys.stdin.buffer.read().strip() if args.secret_stdin else read_secret(args.secret_file)
        follow_main(args.model, secret, context=args.ctx, threads=args.threads, kv_type=args.kv_type,
                    reference=args.reference, tp=args.tp, tp_reduction=args.tp_reduction, pp=args.pp,
                    pp_split=args.pp_split)
    except DeeprootsError as error:  # rank 0 gone, a refused join, a bad file: one line, as the CLI's errors
        print(f"deeproots rank {os.environ.get('RANK', '?')}: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
