//! Time-bounded mutation fuzzing of the parsers that take untrusted input:
//! the jobs file (YAML → config), schedule specs (and next-instant
//! computation), targets, exclude patterns, the remote `find` listing, the
//! rsync daemon `--list-only` listing and the importers (sersync XML,
//! crontab, loop scripts). No input may panic, hang, let a listing entry
//! escape its root, or make an importer print a jobs file that does not
//! load.
//!
//! Each target runs for `SYNCJOB_FUZZ_SECS` seconds (default 60); the seed
//! is printed and can be replayed with `SYNCJOB_FUZZ_SEED`. A crashing
//! input is written to `target/fuzz-crash-<name>` before the test fails.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&[u8]] = &[
    b":",
    b"\n",
    b"\n  ",
    b"\n    ",
    b"- ",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"*",
    b"&a ",
    b"*a",
    b"!!str ",
    b"!!binary ",
    b"${HOME}",
    b"${X:-y}",
    b"$${",
    b"\"",
    b"'",
    b"#",
    b"|\n  ",
    b">-\n",
    b"@every ",
    b"@hourly",
    b"/",
    b"..",
    b"../",
    b"\0",
    b"\xff",
    b"\xe4\xb8\xad",
    b"~",
    b"null",
    b"true",
    b"yes",
    b"0x1F",
    b"-1",
    b"99999999999999999999",
    b"1e9",
    b"*/0",
    b"61",
    b"L",
    b"W",
    b"SUN",
    b"jan-dec",
    b"7",
    b"0-7/2",
    b"ssh://",
    b"[::1]:",
    b"@",
    b"::",
    b"**",
    b"?",
    b"include: ",
    b"jobs:",
    b"defaults:",
    b"source: ",
    b"remote: ",
    b"schedule: ",
    b"exclude: ",
    b"ssh: ",
    b"port: ",
    b"timeout: ",
    b"max_delete: ",
    b"<<: *a\n",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 | 3 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, t.iter().copied());
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            5 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = input[a..b].to_vec();
                let i = rng.below(len + 1);
                input.splice(i..i, chunk);
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(128)).min(other.len());
                    let i = rng.below(len + 1);
                    input.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ if len > 0 => {
                let i = rng.below(len);
                input[i] = b"\n :-[]{}'\"*/,0123456789"[rng.below(23)];
            }
            _ => {}
        }
    }
    input.truncate(64 * 1024);
}

fn fuzz(name: &str, seeds: &[&[u8]], check: impl Fn(&[u8])) {
    let secs: u64 = std::env::var("SYNCJOB_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("SYNCJOB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fuzz {name}: seed {seed}, {secs}s (SYNCJOB_FUZZ_SEED / SYNCJOB_FUZZ_SECS)");
    let mut rng = Rng(seed);
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    let mut pool: Vec<Vec<u8>> = seeds.clone();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    let mut slowest = Duration::ZERO;
    while Instant::now() < deadline {
        let mut input = pool[rng.below(pool.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        let t = Instant::now();
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let out = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join(format!("fuzz-crash-{name}"));
            let _ = std::fs::write(&out, &input);
            panic!(
                "fuzz {name}: panic on input {:?} (saved to {})",
                String::from_utf8_lossy(&input),
                out.display()
            );
        }
        let took = t.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < Duration::from_secs(5),
            "fuzz {name}: {took:?} on input {:?}",
            String::from_utf8_lossy(&input)
        );
        // keep some mutants as new starting points
        if pool.len() < 4096 && rng.below(8) == 0 {
            pool.push(input);
        }
        n += 1;
    }
    eprintln!("fuzz {name}: {n} inputs, slowest {slowest:?}, no panic");
    assert!(n > 100, "the fuzzer ran");
}

#[test]
fn fuzz_config_parser() {
    let seeds: &[&[u8]] = &[
        include_bytes!("../jobs.example.yaml"),
        include_bytes!("../packaging/jobs.yaml.example"),
        b"defaults:\n  timezone: Asia/Shanghai\n  retries: 3\n  ssh: { port: 2200, timeout: 10s }\njobs:\n  tp5shop:\n    source: /usr/local/nginx/html/tp5shop\n    remote:\n      - root@192.168.17.101:/usr/local/nginx/html/tp5shop\n      - ssh://deploy@web3:2222/srv/tp5shop\n    mode: incremental\n    delete: true\n    schedule: \"*/1 * * * * *\"\n    exclude: [\"*.svn\", \"*.gz\", \"/info/\", \"/static/\"]\n",
        b"jobs:\n  a: &x\n    source: /srv/a\n    remote: /srv/b\n  b:\n    <<: *x\n    remote: [\"[::1]:/x\", 'u@h:/y']\n    max_delete: 5\n    before: echo ${USER:-me}\n",
        b"include: [jobs.d/*.yaml]\nshutdown_timeout: 1m30s\njobs: {}\n",
        b"metrics: \"[::1]:9750\"\nmetrics_textfile: tf\ncluster:\n  etcd: [http://127.0.0.1:2379, \"http://e:1/\"]\n  ttl: 10s\n  prefix: /syncjob/shop\njobs:\n  a:\n    source: /srv/a\n    remote: /srv/b\n    stale_after: 10m\n",
    ];
    fuzz("config", seeds, |input| {
        let _ = syncjob::config::parse(Path::new("/nonexistent-fuzz/jobs.yaml"), input);
    });
}

#[test]
fn fuzz_schedule_parser_and_next_instants() {
    let seeds: &[&[u8]] = &[
        b"*/5 * * * * *",
        b"0 2 * * 1-5",
        b"30 2 * * *",
        b"0 0 13 * 5",
        b"@every 1m30s",
        b"@hourly",
        b"0 0 30 2 *",
        b"15,45 */2 1-15/3 JAN-MAR SUN,sat",
        b"59 59 23 31 12 7",
    ];
    let zones: Vec<chrono_tz::Tz> = [
        "UTC",
        "America/New_York",
        "Europe/London",
        "Australia/Lord_Howe",
    ]
    .iter()
    .map(|z| z.parse().unwrap())
    .collect();
    fuzz("schedule", seeds, |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        if let Ok(s) = syncjob::schedule::Schedule::parse(text) {
            for (i, tz) in zones.iter().enumerate() {
                // around the 2026 DST changes and a leap day
                let from =
                    chrono::DateTime::from_timestamp(1_772_000_000 + i as i64 * 9_000_000, 0)
                        .unwrap();
                let mut t = from;
                for _ in 0..3 {
                    match s.next_after(t, *tz) {
                        Some(n) => {
                            assert!(n > t, "next instant after {t} is {n}");
                            t = n;
                        }
                        None => break,
                    }
                }
            }
        }
    });
}

#[test]
fn fuzz_targets_and_patterns() {
    let seeds: &[&[u8]] = &[
        b"root@192.168.17.101:/usr/local/nginx/html",
        b"ssh://deploy@web3:2222/srv/tp5shop",
        b"[::1]:/srv/x",
        b"user@[fe80::1%eth0]:/x",
        b"/srv/copy",
        b"host::module",
        b"*.svn",
        b"/info/",
        b"a/**/b?.[ch]",
    ];
    fuzz("targets", seeds, |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        let _ = syncjob::target::parse(text, Path::new("/base"));
        let _ = syncjob::filter::Filter::new(&[text]);
    });
}

#[test]
fn fuzz_remote_listing_parser() {
    let entry = |ty: &str, name: &[u8]| {
        let mut v = Vec::new();
        for f in [
            ty.as_bytes(),
            b"12",
            b"1700000000.5",
            b"644",
            b"0",
            b"0",
            name,
            b"",
        ] {
            v.extend_from_slice(f);
            v.push(0);
        }
        v
    };
    let mut good = entry("d", b"");
    good.extend(entry("f", b"a.txt"));
    good.extend(entry("d", b"dir"));
    good.extend(entry("f", b"dir/b \n-x"));
    good.extend(entry("l", b"link"));
    let mut bad = entry("d", b"");
    bad.extend(entry("f", b"../x"));
    bad.extend(entry("f", b"/etc/passwd"));
    bad.extend(entry("f", b"link/inside"));
    let seeds: Vec<&[u8]> = vec![&good, &bad];
    fuzz("listing", &seeds, |input| {
        let mut errors = Vec::new();
        let tree = syncjob::transport::ssh::parse_find(input, &mut errors);
        // whatever was accepted stays inside the root
        for (p, _) in tree.iter() {
            assert!(!p.is_absolute(), "absolute entry {p:?}");
            assert!(
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "unsafe entry {p:?}"
            );
        }
    });
}

#[test]
fn fuzz_rsync_daemon_listing_parser() {
    let good: &[u8] = b"drwxr-xr-x        4096 2026/11/27 05:18:22 .
lrwxrwxrwx           3 2026/11/27 05:18:22 l -> a/x
-rw-r--r--           0 2026/11/27 05:18:22 new\\#012line
drwxr-xr-x        4096 2026/11/27 05:18:22 a
-rwsr-x--T           3 1970/01/01 00:00:01 a/x
";
    let bad: &[u8] = b"drwxr-xr-x 1 2026/11/27 05:18:22 .
-rw-r--r-- 1 2026/11/27 05:18:22 ../etc/passwd
lrwxrwxrwx 1 2026/11/27 05:18:22 d -> /etc
-rw-r--r-- 1 2026/11/27 05:18:22 d/passwd
-rw-r--r-- 1 2026/11/27 05:18:22 \\#056\\#056/x
";
    fuzz("rsync-listing", &[good, bad], |input| {
        if let Ok((Some(tree), _)) = syncjob::transport::rsyncd::parse_listing(input) {
            for (p, _) in tree.iter() {
                assert!(
                    p.components()
                        .all(|c| matches!(c, std::path::Component::Normal(_))),
                    "unsafe entry {p:?}"
                );
            }
        }
    });
}

#[test]
fn fuzz_importers() {
    let seeds: &[&[u8]] = &[
        include_bytes!("fixtures/sersync/seed.xml"),
        include_bytes!("fixtures/sersync/several-remotes.xml"),
        include_bytes!("fixtures/crontab/user.crontab"),
        include_bytes!("fixtures/crontab/system.crontab"),
        include_bytes!("fixtures/crontab/loop.sh"),
        include_bytes!("fixtures/crontab/loop-oneline.sh"),
    ];
    fuzz("import", seeds, |input| {
        use syncjob::import;
        let mut outs = vec![
            import::crontab::import(input, "fuzz"),
            import::crontab::import_loop(input, "fuzz"),
        ];
        if let Ok(t) = import::sersync::import(input, "fuzz") {
            outs.push(t);
        }
        for text in outs {
            if text.lines().any(|l| l == "jobs:") {
                assert!(
                    import::self_check(&text).is_ok(),
                    "{:?}\n{text}",
                    import::self_check(&text)
                );
            }
        }
    });
}
