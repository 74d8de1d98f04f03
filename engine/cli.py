"""The `edgeproxy` command: `run` serves a config, `check` validates one (like `nginx -t`),
`reference` prints the config reference generated from the schema, `hash` prints the form a
consumer's API key or password takes in the config."""

import argparse
import sys

from engine import __version__
from engine.chain.schema import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edgeproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgeproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the config")
    run.add_argument("-c", "--config", default="config.toml")
    check = sub.add_parser("check", help="validate the config and exit (1 on error)")
    check.add_argument("-c", "--config", default="config.toml")
    sub.add_parser("reference", help="print the config reference (markdown) from the schema")
    hashing = sub.add_parser("hash", help="read an API key or password on stdin, print its "
                                          "hash for [[consumers]]")
    hashing.add_argument("kind", choices=("api-key", "password"))
    hashing.add_argument("--rounds", type=int, default=12, help="bcrypt cost (password)")
    args = parser.parse_args(argv)

    if args.command == "hash":
        from engine.filters.consumers import hash_secret

        # Read from stdin, never argv: a secret on the command line stays in shell history.
        secret = sys.stdin.buffer.readline().rstrip(b"\r\n")
        if not secret:
            sys.stderr.write("edgeproxy: nothing read on stdin\n")
            return 1
        print(hash_secret(args.kind, secret, args.rounds))
        return 0

    if args.command == "reference":
        from engine.control.config import Config
        from engine.chain.schema import reference_markdown

        print("\n".join(reference_markdown(Config, "")))
        return 0

    from engine.control.reload import load_candidate

    try:
        cand = load_candidate(args.config)  # parse, validate and compile, as a reload does
    except ConfigError as exc:
        sys.stderr.write(f"edgeproxy: {args.config} is invalid:\n")
        for path, message in exc.errors:
            sys.stderr.write(f"  {path}: {message}\n" if path else f"  {message}\n")
        return 1
    cfg = cand.cfg
    if args.command == "check":
        print(f"edgeproxy: {args.config} is valid "
              f"({len(cfg.routes)} routes, {len(cfg.upstreams)} upstreams)")
        return 0
    from engine.control.supervisor import Supervisor

    return Supervisor(cfg, args.config, cand.digest, cand.runtime).run()
