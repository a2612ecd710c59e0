//! Just enough of the POSIX shell to read crontab commands and loop
//! scripts: words with '…', "…" and `\` quoting, the operators `;` `&&`
//! `||` `|` `&` and newlines, and redirections.
//!
//! Invariants: a word records whether it holds an unquoted glob character
//! or any expansion (`$`, backquote), so callers never take such a word for
//! a literal path; nothing is ever executed or expanded.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Word(Word),
    /// `;` `&&` `||` `|` `&` or `\n`
    Op(String),
    /// A redirection with its target (dropped by callers).
    Redirect(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word {
    pub text: String,
    /// holds `$` or a backquote (outside single quotes)
    pub dynamic: bool,
    /// holds an unquoted `*`, `?` or `[`
    pub glob: bool,
}

/// Split `s` into tokens; an unterminated quote is an error.
pub fn split(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut w = Word::default();
    let mut in_word = false;
    let mut it = s.chars().peekable();
    let flush = |w: &mut Word, in_word: &mut bool, out: &mut Vec<Tok>| {
        if *in_word {
            out.push(Tok::Word(std::mem::take(w)));
            *in_word = false;
        }
    };
    while let Some(c) = it.next() {
        match c {
            '\'' => {
                in_word = true;
                single_quoted(&mut it, &mut w)?;
            }
            '"' => {
                in_word = true;
                double_quoted(&mut it, &mut w)?;
            }
            '\\' => match it.next() {
                Some('\n') => {}
                Some(x) => {
                    in_word = true;
                    w.text.push(x);
                }
                None => {}
            },
            ' ' | '\t' => flush(&mut w, &mut in_word, &mut out),
            '#' if !in_word => {
                // a comment to the end of the line
                while it.peek().is_some_and(|x| *x != '\n') {
                    it.next();
                }
            }
            ';' | '\n' => {
                flush(&mut w, &mut in_word, &mut out);
                out.push(Tok::Op(c.to_string()));
            }
            '&' | '|' => {
                if c == '&' && it.peek() == Some(&'>') {
                    flush(&mut w, &mut in_word, &mut out);
                    it.next();
                    redirect(&mut it, &mut out, "&>".into())?;
                    continue;
                }
                flush(&mut w, &mut in_word, &mut out);
                if it.peek() == Some(&c) {
                    it.next();
                    out.push(Tok::Op(format!("{c}{c}")));
                } else {
                    out.push(Tok::Op(c.to_string()));
                }
            }
            '>' | '<' => {
                // `2>`, `2>&1`: a word of digits before is the descriptor
                let mut op = String::new();
                if in_word && !w.text.is_empty() && w.text.chars().all(|d| d.is_ascii_digit()) {
                    op = std::mem::take(&mut w.text);
                    in_word = false;
                    w = Word::default();
                } else {
                    flush(&mut w, &mut in_word, &mut out);
                }
                op.push(c);
                redirect(&mut it, &mut out, op)?;
            }
            _ => {
                in_word = true;
                w.glob |= matches!(c, '*' | '?' | '[');
                w.dynamic |= matches!(c, '$' | '`');
                w.text.push(c);
            }
        }
    }
    flush(&mut w, &mut in_word, &mut out);
    Ok(out)
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// The rest of `'…'` (after the opening quote): taken literally.
fn single_quoted(it: &mut Chars, w: &mut Word) -> Result<(), String> {
    loop {
        match it.next() {
            Some('\'') => return Ok(()),
            Some(x) => w.text.push(x),
            None => return Err("unterminated '".into()),
        }
    }
}

/// The rest of `"…"`: `\` escapes `"`, `\`, `$` and backquote; `$` and
/// backquote make the word dynamic.
fn double_quoted(it: &mut Chars, w: &mut Word) -> Result<(), String> {
    loop {
        match it.next() {
            Some('"') => return Ok(()),
            Some('\\') => match it.next() {
                Some(x @ ('"' | '\\' | '$' | '`')) => w.text.push(x),
                Some('\n') => {}
                Some(x) => {
                    w.text.push('\\');
                    w.text.push(x);
                }
                None => return Err("unterminated \"".into()),
            },
            Some(x) => {
                if x == '$' || x == '`' {
                    w.dynamic = true;
                }
                w.text.push(x);
            }
            None => return Err("unterminated \"".into()),
        }
    }
}

/// The rest of a redirection after its first `>`/`<`: more `>`, `&N`, or a
/// target word.
fn redirect(it: &mut Chars, out: &mut Vec<Tok>, mut op: String) -> Result<(), String> {
    while it.peek() == Some(&'>') {
        op.push(it.next().unwrap_or('>'));
    }
    if it.peek() == Some(&'&') {
        op.push(it.next().unwrap_or('&'));
        while it.peek().is_some_and(|c| c.is_ascii_digit() || *c == '-') {
            op.push(it.next().unwrap_or('-'));
        }
        out.push(Tok::Redirect(op));
        return Ok(());
    }
    while it.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
        it.next();
    }
    // the target: one word (quotes kept simple)
    let rest: String = {
        let mut t = String::new();
        while let Some(&c) = it.peek() {
            if matches!(c, ' ' | '\t' | '\n' | ';' | '&' | '|') {
                break;
            }
            t.push(c);
            it.next();
        }
        t
    };
    if rest.is_empty() {
        return Err(format!("`{op}` without a target"));
    }
    out.push(Tok::Redirect(format!("{op}{rest}")));
    Ok(())
}

/// Simple commands (their words), split at `;` `&&` `||` `&` and newlines;
/// a pipe's right side is returned as its own command with `piped` set.
pub fn commands(toks: &[Tok]) -> Vec<(Vec<Word>, bool)> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut piped = false;
    for t in toks {
        match t {
            Tok::Word(w) => cur.push(w.clone()),
            Tok::Redirect(_) => {}
            Tok::Op(op) => {
                if !cur.is_empty() {
                    out.push((std::mem::take(&mut cur), piped));
                }
                piped = op == "|";
            }
        }
    }
    if !cur.is_empty() {
        out.push((cur, piped));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        commands(&split(s).unwrap())
            .into_iter()
            .flat_map(|(c, _)| c.into_iter().map(|w| w.text))
            .collect()
    }

    #[test]
    fn quoting_operators_and_redirections() {
        assert_eq!(
            words(r#"cd /srv && rsync -e "ssh -p 22" 'a b' c\ d >/dev/null 2>&1"#),
            ["cd", "/srv", "rsync", "-e", "ssh -p 22", "a b", "c d"]
        );
        let c = commands(&split("rsync a b | logger -t x; sleep 1 # done").unwrap());
        assert_eq!(c.len(), 3);
        assert!(c[1].1, "right side of a pipe");
        assert_eq!(c[2].0[0].text, "sleep");
        let t = split("rsync $HOME/x /srv/*").unwrap();
        let ws: Vec<&Word> = t
            .iter()
            .filter_map(|t| match t {
                Tok::Word(w) => Some(w),
                _ => None,
            })
            .collect();
        assert!(ws[1].dynamic && !ws[1].glob);
        assert!(ws[2].glob);
        assert!(split("rsync 'a").is_err());
        assert_eq!(words("a &>>/tmp/log b"), ["a", "b"]);
    }
}
