//! The filter's logic, free of the plugin bindings (so it is unit-tested
//! natively): whole-word, case-insensitive masking of a list of words over
//! a stream of chunks.

/// A word character: a match must not have one right before or after it.
pub fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Simple case folding, one character to one character.
fn fold(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

/// The words to mask and what to put in their place.
#[derive(Debug, Clone)]
pub struct Masker {
    words: Vec<Vec<char>>,
    mask: String,
}

impl Masker {
    /// `words` is the config value: a JSON list of strings.
    pub fn from_config(words: Option<&str>, mask: Option<&str>) -> Result<Masker, String> {
        let words = words.ok_or("config `words` is missing (a JSON list of words)")?;
        let list: Vec<String> = serde_json::from_str(words)
            .map_err(|e| format!("config `words` is not a JSON list of strings: {e}"))?;
        Ok(Masker::new(&list, mask.unwrap_or("****")))
    }

    /// Masks each of `words` (empty ones are ignored) with `mask`.
    pub fn new(words: &[impl AsRef<str>], mask: &str) -> Masker {
        let mut words: Vec<Vec<char>> = words
            .iter()
            .map(|w| w.as_ref().trim().chars().map(fold).collect::<Vec<_>>())
            .filter(|w| !w.is_empty())
            .collect();
        // Longest first: "top secret" wins over "top".
        words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        words.dedup();
        Masker {
            words,
            mask: mask.to_string(),
        }
    }
}

/// How the text from some position compares with a word.
enum Cmp {
    /// It differs.
    No,
    /// The text ends inside the word (it could still become it).
    Prefix,
    /// The word is there in full.
    Full,
}

fn compare(text: &[char], word: &[char]) -> Cmp {
    let n = text.len().min(word.len());
    if text[..n].iter().zip(word).any(|(&a, &b)| fold(a) != b) {
        Cmp::No
    } else if n < word.len() {
        Cmp::Prefix
    } else {
        Cmp::Full
    }
}

/// One choice's stream: the text held back, and the character released
/// just before it (to tell whether a word may start there).
#[derive(Debug, Default)]
pub struct Stream {
    held: String,
    prev: Option<char>,
}

impl Stream {
    /// Takes in `chunk` and returns the text to release now. Until `end`,
    /// holds back the tail from the first place where a listed word may
    /// start and is not yet decided: a prefix of a word, or a whole word
    /// whose next character (a word boundary or not) has not come yet.
    pub fn push(&mut self, m: &Masker, chunk: &str, end: bool) -> String {
        self.held.push_str(chunk);
        let chars: Vec<char> = self.held.chars().collect();
        let n = chars.len();
        let mut out = String::with_capacity(self.held.len());
        let mut prev = self.prev;
        let mut hold_from = n;
        let mut i = 0;
        while i < n {
            if !prev.is_some_and(is_word) {
                let mut pending = false;
                let mut matched = 0;
                for w in &m.words {
                    match compare(&chars[i..], w) {
                        Cmp::No => {}
                        Cmp::Prefix => pending |= !end,
                        Cmp::Full => {
                            let after = i + w.len();
                            if after < n {
                                if !is_word(chars[after]) {
                                    matched = matched.max(w.len());
                                }
                            } else if end {
                                matched = matched.max(w.len());
                            } else {
                                pending = true;
                            }
                        }
                    }
                }
                if pending {
                    hold_from = i;
                    break;
                }
                if matched > 0 {
                    out.push_str(&m.mask);
                    prev = Some(chars[i + matched - 1]);
                    i += matched;
                    continue;
                }
            }
            out.push(chars[i]);
            prev = Some(chars[i]);
            i += 1;
        }
        self.held = chars[hold_from..].iter().collect();
        self.prev = prev;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str], chunks: &[&str]) -> (String, Vec<String>) {
        let m = Masker::new(words, "****");
        let mut s = Stream::default();
        let mut pieces: Vec<String> = chunks.iter().map(|c| s.push(&m, c, false)).collect();
        pieces.push(s.push(&m, "", true));
        (pieces.concat(), pieces)
    }

    #[test]
    fn whole_words_only_and_any_case() {
        let (out, _) = run(&["secret"], &["Secret: the SECRET secretive secrets, secret_x, a-secret."]);
        assert_eq!(out, "****: the **** secretive secrets, secret_x, a-****.");
    }

    #[test]
    fn split_one_character_at_a_time() {
        let text = "my secret, not secretive; top secret";
        let chunks: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (out, pieces) = run(&["secret", "top secret"], &chunks);
        assert_eq!(out, "my ****, not secretive; ****");
        // Nothing that could still become a word was ever released.
        // Nothing that could still become a word was released early: the
        // only `s` released is in `secretive`, once its `i` showed up.
        let with_s: Vec<&String> = pieces.iter().filter(|p| p.contains('s')).collect();
        assert_eq!(with_s, ["secreti"]);
    }

    #[test]
    fn holds_only_what_could_still_become_a_word() {
        let m = Masker::new(&["secret"], "****");
        let mut s = Stream::default();
        assert_eq!(s.push(&m, "the se", false), "the ");
        assert_eq!(s.push(&m, "a", false), "sea");
        assert_eq!(s.push(&m, " secret", false), " ");
        assert_eq!(s.push(&m, " is", false), "**** is");
        // Inside a word nothing can start: no hold.
        assert_eq!(s.push(&m, " xse", false), " xse");
        assert_eq!(s.push(&m, "", true), "");
    }

    #[test]
    fn end_releases_and_masks_a_final_word() {
        let (out, _) = run(&["paris"], &["to Par", "is"]);
        assert_eq!(out, "to ****");
        let (out, _) = run(&["paris"], &["to Par"]);
        assert_eq!(out, "to Par");
    }

    #[test]
    fn multibyte_text() {
        let (out, _) = run(&["café"], &["un CAF", "É, déjà café"]);
        assert_eq!(out, "un ****, déjà ****");
    }

    #[test]
    fn config() {
        assert!(Masker::from_config(None, None).is_err());
        assert!(Masker::from_config(Some("secret"), None).is_err());
        let m = Masker::from_config(Some(r#"["a", "", "bb"]"#), Some("[x]")).unwrap();
        assert_eq!(m.words.len(), 2);
        assert_eq!(m.mask, "[x]");
    }
}
