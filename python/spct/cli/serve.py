"""`spct serve`: the reward server (`spct.serve`; the API: docs/serve.md).

Checks, in order, before the model loads: the numbers, the host and key rules (a non-loopback --host needs a key,
or --insecure-no-auth), that the port can be bound, the model names. Then it loads the model and serves until
SIGTERM or Ctrl-C, and exits 0 after draining.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from spct.cli import checks

LOOPBACK_NAMES = ("localhost",)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_bind(host: str, port: int) -> None:
    """The address can be bound now (a taken port is named before the model loads)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), port))
    except OSError as exc:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                         "choose another --port (0 picks a free one)") from None


def _served_name(model: str) -> str:
    """The name responses carry: an alias or Hugging Face id as given, a folder or file by its own name (never the
    machine's path)."""
    path = Path(model)
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return model


def _check(args: argparse.Namespace) -> str | None:
    """Numbers, then the host, key and port. Returns the API key (--api-key, else SPCT_API_KEY, else None)."""
    for option, value, low in (("--k", args.k, 1), ("--max-new-tokens", args.max_new_tokens, 1),
                               ("--seed", args.seed, 0), ("--max-items", args.max_items, 1),
                               ("--max-k", args.max_k, 1), ("--max-tokens", args.max_tokens, 1),
                               ("--max-queue", args.max_queue, 1), ("--group-size", args.group_size, 1),
                               ("--max-batch", args.max_batch, 1), ("--replicas", args.replicas, 1),
                               ("--cpus-per-replica", args.cpus_per_replica, 1)):
        checks.at_least(option, value, low)
    if args.replicas is None and args.address is not None:
        raise ValueError("--address is for --replicas: add --replicas N, or leave --address out")
    for option, value in (("--max-body-mb", args.max_body_mb), ("--request-timeout", args.request_timeout),
                          ("--group-timeout", args.group_timeout), ("--shutdown-timeout", args.shutdown_timeout)):
        checks.between(option, value, 0, float("inf"), low_open=True)
    checks.at_least("--temperature", args.temperature, 0)
    checks.between("--port", args.port, 0, 65535)
    if args.k > args.max_k:
        raise ValueError(f"--k {args.k} is over --max-k {args.max_k}")
    if args.max_new_tokens > args.max_tokens:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} is over --max-tokens {args.max_tokens}")
    key = args.api_key if args.api_key is not None else os.environ.get("SPCT_API_KEY") or None
    if key is not None and not key.strip():
        raise ValueError("--api-key is empty; give a key, or leave it out on a loopback --host")
    if not _is_loopback(args.host) and key is None and not args.insecure_no_auth:
        raise ValueError(f"--host {args.host} is not a loopback address and the server has no key: give --api-key "
                         "(or SPCT_API_KEY), or --insecure-no-auth to serve it open")
    _check_bind(args.host, args.port)
    return key


def _config(args: argparse.Namespace):
    from spct.serve import Config

    return Config(model_name=args.served_model_name or _served_name(args.model), k=args.k,
                  temperature=args.temperature, max_new_tokens=args.max_new_tokens, force_scores=args.force_scores,
                  seed=args.seed, reduce=args.reduce, invalid_reward=args.invalid_reward, max_items=args.max_items,
                  max_k=args.max_k, max_tokens=args.max_tokens, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                  max_queue=args.max_queue, request_timeout=args.request_timeout, group_size=args.group_size,
                  group_timeout=args.group_timeout)


def cmd_serve(args: argparse.Namespace) -> None:
    key = _check(args)
    checks.model(args.model, "--model")
    if args.meta_rm is not None:
        checks.model(args.meta_rm, "--meta-rm")
    if args.replicas is not None:
        _serve_replicas(args, key)
        return
    from spct.serve import load, run

    grm, meta_rm = load(args.model, dtype=args.dtype, max_batch=args.max_batch, kv_cache_mb=args.kv_cache_mb,
                        meta_rm=args.meta_rm)
    run(grm, _config(args), host=args.host, port=args.port, meta_rm=meta_rm, api_key=key,
        shutdown_timeout=args.shutdown_timeout, log_level=args.log_level, access_log=args.access_log)


def _serve_replicas(args: argparse.Namespace, key: str | None) -> None:
    """`--replicas N`: the app on N Ray Serve replicas (spct.ray.serve) behind --host:--port, until SIGTERM."""
    from spct.ray import Spec, connect, disconnect, serve_replicas

    port = args.port or _free_port(args.host)
    connect(args.address, args.replicas, args.cpus_per_replica, ("--replicas", "--replicas", "--cpus-per-replica"))
    spec = Spec(model=args.model, dtype=args.dtype, max_batch=args.max_batch, kv_cache_mb=args.kv_cache_mb,
                meta_rm=args.meta_rm, config=_config(args), api_key=key, threads=args.cpus_per_replica)
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host

    def ready() -> None:
        print(f"spct serve: listening on http://{shown}:{port} ({args.replicas} replicas on Ray Serve)",
              file=sys.stderr, flush=True)

    try:
        serve_replicas(spec, args.replicas, args.cpus_per_replica, args.host, port, local=args.address is None,
                       shutdown_timeout=args.shutdown_timeout, on_ready=ready)
    finally:
        disconnect()


def _free_port(host: str) -> int:
    """A port free on host now (`--port 0` with --replicas: Ray Serve's proxy needs a number)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return s.getsockname()[1]


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="a reward server: /v1/score, /get_reward (OpenRLHF), "
                       "/v1/chat/completions, /health, /metrics")
    p.add_argument("--model", default="smollm2-135m", help="alias, checkpoint folder, .gguf or Hugging Face id")
    p.add_argument("--meta-rm", help="a Meta RM checkpoint: guided voting when a request gives k_meta")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (non-loopback needs --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed when ready)")
    p.add_argument("--api-key", help="every route but /health needs 'Authorization: Bearer KEY' (default: the "
                   "SPCT_API_KEY environment variable)")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without a key")
    p.add_argument("--served-model-name", help="the model name in responses (default: --model, or the name of its "
                   "folder or file)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and activations")
    p.add_argument("--max-batch", type=int, default=256, help="sample rows the engine decodes together")
    p.add_argument("--kv-cache-mb", type=float, help="the paged KV budget in MiB (default: a quarter of free memory)")
    g = p.add_argument_group("scoring defaults (a /v1/score request may override them; /get_reward uses them)")
    g.add_argument("--k", type=int, default=1, help="samples per item (1: greedy)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default: 0 for k = 1, else 0.5)")
    g.add_argument("--max-new-tokens", type=int, default=512, help="tokens per judgement, at most")
    g.add_argument("--force-scores", action="store_true", help="append a grammar-constrained score group to "
                   "samples that end without one")
    g.add_argument("--seed", type=int, default=0, help="the seed of /get_reward's samples")
    g.add_argument("--reduce", default="sum", choices=["sum", "mean"], help="sum of the voted samples' scores, or "
                   "that sum over the samples voted")
    g.add_argument("--invalid-reward", type=float, default=0.0, help="/get_reward's reward for a response no "
                   "sample judged validly")
    g.add_argument("--group-size", type=int, default=1, help="/get_reward: judge G responses of one prompt "
                   "together (1: each alone)")
    g.add_argument("--group-timeout", type=float, default=2.0, help="/get_reward: seconds to wait for a group "
                   "to fill before judging the responses that came")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-items", type=int, default=256, help="items (or /get_reward queries) per request")
    lim.add_argument("--max-k", type=int, default=64, help="k (and chat n) per request")
    lim.add_argument("--max-tokens", type=int, default=4096, help="max_new_tokens (and chat max_tokens) per request")
    lim.add_argument("--max-body-mb", type=float, default=8.0, help="request body size (413 over it)")
    lim.add_argument("--max-queue", type=int, default=512, help="requests in progress at once (429 over it)")
    lim.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may take (504 over "
                     "it; its samples are cancelled)")
    lim.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds to finish the requests in "
                     "flight after SIGTERM")
    ray = p.add_argument_group("replicas on Ray Serve (the ray extra)")
    ray.add_argument("--replicas", type=int, help="serve from N replicas on Ray Serve, each loading the model, behind "
                     "--host:--port; requests with the same prompt go to the same replica")
    ray.add_argument("--address", help="with --replicas: a running Ray cluster's HOST:PORT (`ray start --head` "
                     "prints it), or 'auto' (default: start a local Ray)")
    ray.add_argument("--cpus-per-replica", type=int, default=1, help="with --replicas: CPUs (threads) per replica")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.set_defaults(func=cmd_serve)
