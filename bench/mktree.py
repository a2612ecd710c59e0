#!/usr/bin/env python3
# Copied from the team's shared bench helpers (shared/bench/mktree.py) so the
# project's benchmark is self-contained.
"""Deterministic source-tree generator for the sync benchmarks.

  mktree.py gen web   DEST [--seed N]   ~20k files, ~200 MB, PHP-web-app-like layout
  mktree.py gen small DEST [--seed N]   100k files of ~1 KB (512..1536 B) in 1000 dirs
  mktree.py gen big   DEST [--seed N]   4 files x 256 MiB of pseudo-random bytes
  mktree.py mutate DIR [--seed N] [--round R]
        modify 1% of the files (at least 1), add 0.5%, delete 0.5% (rounded)
  mktree.py stat DIR                    file/dir count and total bytes

Same seed (and round) => same names, same bytes, same mtimes.  File mtimes are
fixed (BASE_MTIME + offset) so two generated trees compare equal by size+mtime;
files touched by `mutate` get mtimes that differ from every generated one.
Text is PHP/JS/CSS-like lines drawn from a seeded pool; images and blobs are
seeded random bytes (incompressible).
"""
import argparse
import os
import random
import sys

BASE_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z
MUT_MTIME = BASE_MTIME + 20_000_000
BINARY_EXT = {".png", ".jpg", ".gif", ".webp", ".bin", ".woff2"}
KIB = 1024
MIB = 1024 * KIB

SYL = ("ka ro mi te lu na vo si de ba ri go ta pe zu lo fa ne ki mo ra ti "
       "sa do ve ju pa le co nu hi wa ye xo qu").split()
WORDS = ("the user order cart item price token cache session request response "
         "route model query builder event listener queue job mail notify policy "
         "guard auth admin report export import locale config service provider "
         "factory seeder migration table column index value key list map filter "
         "return null array string int bool float mixed self static void").split()
TYPES = "int string bool array ?string ?int float mixed void self static iterable".split()
SUFFIX = ("Controller Service Repository Model Request Middleware Provider Policy "
          "Event Listener Job Command Factory Seeder Helper Manager Handler "
          "Resource Collection Exception Trait Interface Test Builder Parser").split()


def ident(rng, cap=True, n=None):
    n = n or rng.randint(2, 4)
    s = "".join(rng.choice(SYL) for _ in range(n))
    return s.capitalize() if cap else s


def words(rng, lo=3, hi=9):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_pool(seed, n=30000):
    """A fixed pool of source-like lines (same for gen and mutate)."""
    rng = random.Random(f"pool:{seed}")
    t = [
        lambda: f"    public function {ident(rng, False)}{ident(rng)}(${ident(rng, False)}, ${ident(rng, False)} = null): {rng.choice(TYPES)}",
        lambda: f"    protected ${ident(rng, False)}{ident(rng)} = [];",
        lambda: f"        ${ident(rng, False)} = $this->{ident(rng, False)}->{ident(rng, False)}(${ident(rng, False)}, '{ident(rng, False)}');",
        lambda: f"        if (${ident(rng, False)} === null || count(${ident(rng, False)}) > {rng.randint(0, 999)}) {{",
        lambda: f"            throw new \\{ident(rng)}\\{ident(rng)}Exception('{words(rng)}');",
        lambda: f"        return ${ident(rng, False)}->{ident(rng, False)}();",
        lambda: "    }",
        lambda: "        }",
        lambda: "",
        lambda: f"     * @param {rng.choice(TYPES)} ${ident(rng, False)} {words(rng)}",
        lambda: f"     * @return {rng.choice(TYPES)}",
        lambda: f"use {ident(rng)}\\{ident(rng)}\\{ident(rng)}{rng.choice(SUFFIX)};",
        lambda: f"        // {words(rng, 4, 12)}",
        lambda: f"        '{ident(rng, False)}_{ident(rng, False)}' => env('{ident(rng).upper()}_{ident(rng).upper()}', '{ident(rng, False)}'),",
        lambda: f"  const {ident(rng, False)} = await fetch(`/api/{ident(rng, False)}/${{{ident(rng, False)}}}`);",
        lambda: f".{ident(rng, False)}-{ident(rng, False)} {{ margin: {rng.randint(0, 40)}px; color: #{rng.randrange(16**6):06x}; }}",
        lambda: f"    <div class=\"{ident(rng, False)} {ident(rng, False)}\">{{{{ ${ident(rng, False)}->{ident(rng, False)} }}}}</div>",
    ]
    w = [6, 2, 10, 4, 2, 4, 5, 3, 4, 4, 2, 3, 5, 3, 2, 2, 2]
    return [f() for f in rng.choices(t, weights=w, k=n)]


def text_blob(rng, pool, size, header=""):
    parts = [header] if header else []
    n = len(header)
    while n < size:
        chunk = rng.choices(pool, k=64)
        parts.extend(chunk)
        n += sum(len(c) + 1 for c in chunk)
    return ("\n".join(parts)[:size - 1] + "\n").encode()


IMG_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff\xe0", ".gif": b"GIF89a",
             ".webp": b"RIFF\x00\x00\x00\x00WEBP", ".woff2": b"wOF2"}
HEADERS = {".php": "<?php\n\ndeclare(strict_types=1);\n", ".js": "'use strict';\n",
           ".json": "{\n", ".md": "# README\n", ".css": "/* styles */\n",
           ".twig": "{% extends 'base.html.twig' %}\n", ".blade.php": "@extends('layouts.app')\n"}


def ext_of(path):
    name = os.path.basename(path)
    if name.endswith(".blade.php"):
        return ".blade.php"
    return os.path.splitext(name)[1]


def binary_blob(rng, size, ext):
    magic = IMG_MAGIC.get(ext, b"")
    return magic + rng.randbytes(size - len(magic))


def write(path, data, mtime):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


def set_dir_mtimes(root):
    for d, _, _ in os.walk(root, topdown=False):
        os.utime(d, (BASE_MTIME, BASE_MTIME))


# --------------------------------------------------------------------- web
def web_dirs(rng):
    app = ["app/Http/Controllers", "app/Http/Controllers/Admin", "app/Http/Controllers/Api",
           "app/Http/Controllers/Auth", "app/Http/Middleware", "app/Http/Requests", "app/Models",
           "app/Providers", "app/Jobs", "app/Events", "app/Listeners", "app/Policies",
           "app/Console/Commands", "bootstrap/cache", "config", "database/migrations",
           "database/seeders", "database/factories", "routes", "tests/Unit", "tests/Feature",
           "resources/views/layouts", "resources/views/partials", "resources/views/emails",
           "resources/js/components", "resources/css", "storage/framework/views",
           "public/css", "public/js", "public/fonts"]
    app += [f"app/Services/{ident(rng)}" for _ in range(12)]
    app += [f"resources/views/{ident(rng, False)}/{ident(rng, False)}" for _ in range(25)]
    app += [f"resources/lang/{l}" for l in ("en", "de", "fr", "es", "it", "nl", "pl", "pt")]
    text_dirs = list(app)
    # vendor/: the bulk of a real PHP app
    for _ in range(70):
        base = f"vendor/{ident(rng, False)}/{ident(rng, False)}-{ident(rng, False)}"
        text_dirs += [base, f"{base}/tests", f"{base}/src"]
        for _ in range(rng.randint(3, 12)):
            depth = rng.randint(1, 4)
            text_dirs.append(f"{base}/src/" + "/".join(ident(rng) for _ in range(depth)))
    img_dirs = ["public/img", "public/img/icons", "resources/images"]
    img_dirs += [f"public/uploads/{y}/{m:02d}" for y in (2022, 2023, 2024) for m in range(1, 13)]
    return text_dirs, img_dirs


def gen_web(dest, seed):
    rng = random.Random(f"web:{seed}")
    pool = make_pool(seed)
    text_dirs, img_dirs = web_dirs(rng)
    n_text, n_img = 19_780, 220
    exts = [".php", ".blade.php", ".js", ".css", ".json", ".md", ".twig"]
    ext_w = [74, 6, 8, 4, 3, 3, 2]
    used = set()
    i = 0
    for k in range(n_text):
        d = rng.choice(text_dirs)
        ext = rng.choices(exts, weights=ext_w)[0]
        if ext == ".php" and not d.startswith(("resources", "config", "routes", "database")):
            name = ident(rng) + rng.choice(SUFFIX) + ext
        else:
            name = ident(rng, False) + ext
        rel = f"{d}/{name}"
        while rel in used:
            rel = f"{d}/{ident(rng, False)}{k}{ext}"
        used.add(rel)
        size = int(KIB * 30 ** (rng.random() ** 1.45))  # 1..30 KiB, skewed small
        write(os.path.join(dest, rel), text_blob(rng, pool, size, HEADERS.get(ext, "")), BASE_MTIME + i)
        i += 1
    for k in range(n_img):
        d = rng.choice(img_dirs)
        ext = rng.choice([".png", ".jpg", ".jpg", ".gif", ".webp"])
        rel = f"{d}/{ident(rng, False)}-{k:04d}{ext}"
        size = rng.randint(50 * KIB, 500 * KIB)
        write(os.path.join(dest, rel), binary_blob(rng, size, ext), BASE_MTIME + i)
        i += 1
    set_dir_mtimes(dest)


def gen_small(dest, seed):
    rng = random.Random(f"small:{seed}")
    pool = make_pool(seed)
    i = 0
    for a in range(10):
        for b in range(10):
            for c in range(10):
                d = os.path.join(dest, f"a{a}", f"b{b}", f"c{c}")
                for _ in range(100):
                    ext = rng.choice([".php", ".json", ".txt"])
                    size = rng.randint(512, 1536)
                    write(os.path.join(d, f"n{i:06d}{ext}"), text_blob(rng, pool, size), BASE_MTIME + i)
                    i += 1
    set_dir_mtimes(dest)


def gen_big(dest, seed, n=4, size=256 * MIB):
    rng = random.Random(f"big:{seed}")
    os.makedirs(dest, exist_ok=True)
    chunk = 8 * MIB
    for k in range(n):
        p = os.path.join(dest, f"blob-{k}.bin")
        with open(p, "wb") as f:
            for _ in range(size // chunk):
                f.write(rng.randbytes(chunk))
        os.utime(p, (BASE_MTIME + k, BASE_MTIME + k))
    set_dir_mtimes(dest)


# ------------------------------------------------------------------ mutate
def list_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)


def mutate(root, seed, rnd):
    files = list_files(root)
    n = len(files)
    if n == 0:
        sys.exit("empty tree")
    rng = random.Random(f"mutate:{seed}:{rnd}:{n}")
    pool = make_pool(seed)
    n_mod = max(1, round(n * 0.01))
    n_del = round(n * 0.005)
    n_add = round(n * 0.005)
    picked = rng.sample(files, n_mod + n_del)
    mod, dele = picked[:n_mod], picked[n_mod:]
    t = MUT_MTIME + rnd * 1_000_000
    for j, rel in enumerate(mod):
        p = os.path.join(root, rel)
        ext = ext_of(rel)
        size = os.path.getsize(p)
        if ext in BINARY_EXT:
            # overwrite a region in place (size unchanged): 1 MiB for big blobs, else 4 KiB
            region = min(size, MIB if size >= 64 * MIB else 4 * KIB)
            off = rng.randrange(0, size - region + 1)
            with open(p, "r+b") as f:
                f.seek(off)
                f.write(rng.randbytes(region))
        else:
            data = open(p, "rb").read()
            cut = max(64, len(data) // 10)
            off = rng.randrange(0, max(1, len(data) - cut))
            new = text_blob(rng, pool, cut + rng.randint(16, 256))
            data = data[:off] + new + data[off + cut:] + f"// mutated round {rnd}\n".encode()
            with open(p, "wb") as f:
                f.write(data)
        os.utime(p, (t + j, t + j))
    for rel in dele:
        os.unlink(os.path.join(root, rel))
    survivors = sorted(set(files) - set(dele))
    added_dirs = []
    for k in range(n_add):
        tmpl = rng.choice(survivors)
        ext = ext_of(tmpl)
        size = max(64, os.path.getsize(os.path.join(root, tmpl)))
        rel = os.path.join(os.path.dirname(tmpl), f"new-r{rnd}-{k:05d}{ext}")
        added_dirs.append(os.path.dirname(tmpl))
        data = binary_blob(rng, size, ext) if ext in BINARY_EXT else text_blob(rng, pool, size, HEADERS.get(ext, ""))
        write(os.path.join(root, rel), data, t + n_mod + k)
    # directories whose entries changed: give them a deterministic mtime too
    touched = {os.path.dirname(r) for r in dele} | set(added_dirs)
    for d in sorted(touched):
        os.utime(os.path.join(root, d), (t, t))
    print(f"mutate round {rnd}: {n} files -> modified {n_mod}, deleted {n_del}, added {n_add}")


def stat(root):
    nf = nd = total = 0
    for d, dirs, files in os.walk(root):
        nd += len(dirs)
        for f in files:
            nf += 1
            total += os.lstat(os.path.join(d, f)).st_size
    print(f"{root}: {nf} files, {nd} dirs, {total} bytes ({total / MIB:.1f} MiB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("kind", choices=["web", "small", "big"])
    g.add_argument("dest")
    g.add_argument("--seed", type=int, default=42)
    m = sub.add_parser("mutate")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=42)
    m.add_argument("--round", type=int, default=1)
    s = sub.add_parser("stat")
    s.add_argument("dir")
    a = ap.parse_args()
    if a.cmd == "gen":
        if os.path.exists(a.dest) and os.listdir(a.dest):
            sys.exit(f"{a.dest} exists and is not empty")
        {"web": gen_web, "small": gen_small, "big": gen_big}[a.kind](a.dest, a.seed)
        stat(a.dest)
    elif a.cmd == "mutate":
        mutate(a.dir, a.seed, a.round)
    else:
        stat(a.dir)


if __name__ == "__main__":
    main()
