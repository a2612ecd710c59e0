//! `syncjob import sersync|crontab`: another tool's configuration in, an
//! equivalent jobs file out.
//!
//! Invariants: the output is a function of the input alone (no times, no
//! environment), so the same input gives the same bytes; every string is
//! written as a YAML double-quoted scalar (JSON escaping), so no value can
//! change the document's structure; what cannot be carried over is kept
//! as a `#` comment saying why; the output is parsed with the jobs-file
//! parser before it is printed or written, and written (`-o`) under a
//! temporary name then renamed, never half-written at its final name.

pub mod crontab;
pub mod rsync_args;
pub mod sersync;
pub mod shell;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

#[derive(Debug, clap::Subcommand)]
pub enum ImportCmd {
    /// From a sersync confxml.xml (rsync daemon targets, filters, crontab, plugins)
    Sersync {
        /// sersync's XML configuration
        confxml: std::path::PathBuf,
        /// Write the jobs file here (atomically) instead of printing it
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// From crontab lines running rsync or scp (user crontab, /etc/crontab, /etc/cron.d),
    /// or a `while true; do rsync …; sleep N; done` script with --loop
    Crontab {
        /// The crontab (`-`: standard input) [default: -]
        #[arg(conflicts_with = "script")]
        file: Option<std::path::PathBuf>,
        /// A shell script looping over rsync and sleep
        #[arg(long = "loop", value_name = "FILE")]
        script: Option<std::path::PathBuf>,
        /// Write the jobs file here (atomically) instead of printing it
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
}

/// Why `syncjob import` failed; the caller maps it to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// the input cannot be read or converted
    #[error("{0}")]
    Usage(String),
    /// the result is wrong or cannot be written
    #[error("{0}")]
    Failed(String),
}

/// `syncjob import …`: convert, check the result, print or write it.
pub fn run(cmd: &ImportCmd) -> Result<(), ImportError> {
    let read = |p: &Path| {
        read_input(p).map_err(|e| ImportError::Usage(format!("cannot read {}: {e}", p.display())))
    };
    let (text, output) = match cmd {
        ImportCmd::Sersync { confxml, output } => {
            let shown = confxml.display().to_string();
            let text = sersync::import(&read(confxml)?, &shown)
                .map_err(|e| ImportError::Usage(e.to_string()))?;
            (text, output)
        }
        ImportCmd::Crontab {
            file,
            script,
            output,
        } => {
            let text = match script {
                Some(s) => crontab::import_loop(&read(s)?, &s.display().to_string()),
                None => {
                    let f = file.clone().unwrap_or_else(|| "-".into());
                    let shown = if f == Path::new("-") {
                        "standard input".to_string()
                    } else {
                        f.display().to_string()
                    };
                    crontab::import(&read(&f)?, &shown)
                }
            };
            (text, output)
        }
    };
    if !text.lines().any(|l| l == "jobs:") {
        // nothing to run: the reasons, and no file
        emit(&text, None).map_err(|e| ImportError::Failed(e.to_string()))?;
        return Err(ImportError::Failed(
            "no job could be carried over (the reasons are in the comments above)".into(),
        ));
    }
    self_check(&text).map_err(|e| {
        ImportError::Failed(format!(
            "the imported jobs file does not load (a bug in the importer; please report it):\n{e}\n{text}"
        ))
    })?;
    emit(&text, output.as_deref()).map_err(|e| {
        ImportError::Failed(format!(
            "cannot write {}: {e}",
            output.as_deref().unwrap_or(Path::new("-")).display()
        ))
    })
}

/// One job of the output.
#[derive(Debug, Default, Clone)]
pub struct JobOut {
    pub name: String,
    /// Comments printed above the job (where it came from).
    pub origin: Vec<String>,
    pub source: String,
    pub targets: Vec<String>,
    /// Other keys in order, each with its value already in YAML.
    pub fields: Vec<(String, String)>,
    /// `key: value` pairs under `rsync:` and `ssh:`.
    pub rsync: Vec<(String, String)>,
    pub ssh: Vec<(String, String)>,
    /// What was not carried over, one reason per line.
    pub notes: Vec<String>,
}

impl JobOut {
    pub fn field(&mut self, k: &str, v: String) {
        self.fields.retain(|(x, _)| x != k);
        self.fields.push((k.to_string(), v));
    }
    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        if !self.notes.contains(&s) {
            self.notes.push(s);
        }
    }
}

/// Characters YAML does not allow as they are (controls, DEL, C1,
/// line/paragraph separators, BOM, non-characters).
fn unprintable(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        )
}

/// A YAML double-quoted scalar (JSON escaping, plus `\uXXXX` for what
/// JSON leaves as it is but YAML does not allow).
pub fn q(s: &str) -> String {
    let json = serde_json::to_string(s).expect("strings serialize");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if unprintable(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A comment line's text: line breaks become spaces, other characters
/// YAML does not allow are shown escaped.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' => " ".to_string(),
            c if unprintable(c) => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Job names: `[A-Za-z0-9._-]+`, unique (`-2`, `-3` … appended).
pub fn job_name(want: &str, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = want
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    base = base.trim_matches('-').to_string();
    if base.is_empty() || base.chars().all(|c| c == '.') {
        base = "job".into();
    }
    let mut name = base.clone();
    let mut k = 2;
    while taken.contains(&name) {
        name = format!("{base}-{k}");
        k += 1;
    }
    taken.insert(name.clone());
    name
}

/// The jobs file text: `header` comments, the jobs, `trailer` comments.
/// With no job there is no `jobs:` line (and nothing to write).
pub fn render(header: &[String], jobs: &[JobOut], trailer: &[String]) -> String {
    let mut out = String::new();
    for h in header {
        let _ = writeln!(out, "# {}", comment(h));
    }
    if !jobs.is_empty() {
        out.push_str("jobs:\n");
    }
    for (k, j) in jobs.iter().enumerate() {
        if k > 0 {
            out.push('\n');
        }
        for o in &j.origin {
            let _ = writeln!(out, "  # {}", comment(o));
        }
        let _ = writeln!(out, "  {}:", j.name);
        let _ = writeln!(out, "    source: {}", q(&j.source));
        out.push_str("    remote:\n");
        for t in &j.targets {
            let _ = writeln!(out, "      - {}", q(t));
        }
        for (key, v) in &j.fields {
            let _ = writeln!(out, "    {key}: {v}");
        }
        for (name, map) in [("rsync", &j.rsync), ("ssh", &j.ssh)] {
            if !map.is_empty() {
                let _ = writeln!(out, "    {name}:");
                for (key, v) in map {
                    let _ = writeln!(out, "      {key}: {v}");
                }
            }
        }
        for n in &j.notes {
            let _ = writeln!(out, "    # {}", comment(n));
        }
    }
    if !trailer.is_empty() {
        out.push('\n');
        for t in trailer {
            let _ = writeln!(out, "# {}", comment(t));
        }
    }
    out
}

/// Whether this build's jobs files know the job key `key` (e.g. `watch`,
/// built separately): asked of the parser itself.
pub fn knows_job_key(key: &str) -> bool {
    let doc = format!("jobs:\n  probe:\n    source: /srv/a\n    remote: /srv/b\n    {key}: true\n");
    match crate::config::parse(Path::new("/probe.yaml"), doc.as_bytes()) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains(&format!("`{key}`")),
    }
}

/// Parse the output as a jobs file (relative paths against `dir`), so an
/// import never hands out a file that `check` would refuse for its form.
/// Problems that depend on this machine (a password file or `rsync`
/// missing here) are the operator's to fix, and are not checked.
pub fn self_check(text: &str) -> Result<(), String> {
    match crate::config::parse(Path::new("/import/jobs.yaml"), text.as_bytes()) {
        Ok(_) => Ok(()),
        Err(crate::config::ConfigError::Invalid(problems)) => {
            let real: Vec<String> = problems
                .iter()
                .map(|p| p.to_string())
                .filter(|p| !p.contains("password_file") && !p.contains("`rsync` binary"))
                .collect();
            if real.is_empty() {
                Ok(())
            } else {
                Err(real.join("\n"))
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `job` if it loads on its own as a jobs file, else why not (the
/// checker's message without its position), so that one odd line never
/// spoils the whole output.
pub fn validated(job: JobOut) -> Result<JobOut, String> {
    match self_check(&render(&[], std::slice::from_ref(&job), &[])) {
        Ok(()) => Ok(job),
        Err(e) => Err(e
            .lines()
            .map(|l| match l.split_once(&format!("job {}: ", job.name)) {
                Some((_, msg)) => msg,
                None => l,
            })
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// Print `text`, or write it to `out` (temporary name, then rename).
pub fn emit(text: &str, out: Option<&Path>) -> io::Result<()> {
    let Some(path) = out else {
        use io::Write;
        let mut o = io::stdout().lock();
        return match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
            // a closed pipe (`| head`) is a quiet end
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        };
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "-o needs a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let r = (|| {
        use io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Read an input file (at most 4 MiB: these are small configuration files).
pub fn read_input(path: &Path) -> io::Result<Vec<u8>> {
    use io::Read;
    const MAX: u64 = 4 << 20;
    let mut buf = Vec::new();
    let r: Box<dyn io::Read> = if path == Path::new("-") {
        Box::new(io::stdin())
    } else {
        Box::new(std::fs::File::open(path)?)
    };
    r.take(MAX + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than 4 MiB: not a configuration file",
        ));
    }
    Ok(buf)
}

/// Text from bytes: UTF-8, else Latin-1 (sersync's files declare
/// ISO-8859-1), so no input is refused for its encoding.
pub fn text_of(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|b| *b as char).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_unique() {
        let mut t = BTreeSet::new();
        assert_eq!(job_name("tp5shop", &mut t), "tp5shop");
        assert_eq!(job_name("tp5shop", &mut t), "tp5shop-2");
        assert_eq!(job_name("/usr/local/x y", &mut t), "usr-local-x-y");
        assert_eq!(job_name("..", &mut t), "job");
        assert_eq!(job_name("", &mut t), "job-2");
    }

    #[test]
    fn control_characters_are_escaped() {
        let j = JobOut {
            name: "a".into(),
            source: "/srv/\u{0}x\u{85}\u{2028}y\u{7f}".into(),
            targets: vec!["/srv/y".into()],
            origin: vec!["nul \u{0} here\u{2029}".into()],
            ..Default::default()
        };
        let text = render(&[], &[j], &[]);
        assert!(self_check(&text).is_ok(), "{text}");
        assert!(
            !text.contains('\u{0}') && !text.contains('\u{2028}'),
            "{text}"
        );
    }

    #[test]
    fn strings_cannot_break_the_document() {
        let j = JobOut {
            name: "a".into(),
            source: "/srv/x\"\n  evil: true".into(),
            targets: vec!["/srv/y".into()],
            notes: vec!["two\nlines".into()],
            ..Default::default()
        };
        let text = render(&["head\nline".into()], &[j], &[]);
        assert!(self_check(&text).is_ok(), "{text}");
        assert_eq!(text.matches("evil").count(), 1);
        assert!(!text.contains("\n  evil"));
    }
}
