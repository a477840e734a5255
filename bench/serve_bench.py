#!/usr/bin/env python3
"""Requests per minute of `ldm serve` and its overhead per request over the
generate() call inside it (info.generation_seconds), standard library only.

    build/ldm serve -m tiny_sd_v1.ckpt --config tiny_sd_v1.yaml --vocab V --port 7860 &
    python3 bench/serve_bench.py http://127.0.0.1:7860 [--n 40] [--size 64] [--steps 4]
"""
import argparse
import json
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    body = {"prompt": "a cat", "seed": 1, "steps": a.steps, "width": a.size, "height": a.size}
    post(a.url + "/sdapi/v1/txt2img", body)  # warm
    gen = 0.0
    t0 = time.perf_counter()
    for _ in range(a.n):
        gen += json.loads(post(a.url + "/sdapi/v1/txt2img", body)["info"])["generation_seconds"]
    wall = time.perf_counter() - t0
    print(json.dumps({"requests": a.n, "requests_per_minute": round(60 * a.n / wall, 1),
                      "seconds_per_request": round(wall / a.n, 4), "generate_seconds_per_request": round(gen / a.n, 4),
                      "overhead_percent": round(100 * (wall - gen) / gen, 2)}))


if __name__ == "__main__":
    main()
