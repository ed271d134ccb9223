//! The built-in regexes and how any detector regex becomes a DFA. Shared
//! with `build.rs`, which compiles the built-ins ahead of time (so an
//! instance only deserializes them), and used at run time for operator
//! patterns.
//!
//! Every detector is one regex compiled to a dense, anchored,
//! leftmost-first DFA. The scanner starts it at each character and
//! advances it byte by byte; a DFA that is not dead is a prefix that may
//! still grow into a match, which is what decides how much text to hold.
//! The same automaton decides both, so holding and matching never disagree.

use regex_automata::MatchKind;
use regex_automata::dfa::{StartKind, dense};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_syntax::hir::{Capture, Hir, HirKind, Look, Repetition};

/// A check a candidate match must also pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The regex alone decides.
    None,
    /// Luhn checksum over the digits, not all zeros (payment cards).
    Luhn,
    /// US SSN rules: no 000, 666 or 9xx area, no 00 group, no 0000 serial.
    Ssn,
    /// IBAN: 15 to 34 characters without spaces, ISO 7064 mod 97 = 1.
    Iban,
}

/// The built-in detectors in priority order (ties between equally long
/// matches at the same position go to the earlier one): name, regex, check.
///
/// `\b` is an ASCII word boundary (see [`ascii_word_boundaries`]). These
/// are parsed without the UTF-8 restriction so `(?s-u:.)` can stand for
/// any byte, which keeps the PEM automaton small; every other class here is
/// ASCII, and scanning only starts on character boundaries.
pub const BUILTINS: &[(&str, &str, Check)] = &[
    (
        "private_key",
        // An unterminated block matches up to the end of the text.
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?:(?s-u:.)*?-----END[A-Z0-9 ]*PRIVATE KEY-----|(?s-u:.)*$)",
        Check::None,
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
        Check::None,
    ),
    (
        "aws_access_key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
        Check::None,
    ),
    (
        "iban",
        r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        Check::Iban,
    ),
    (
        "credit_card",
        r"\b[0-9](?:[ -]?[0-9]){12,18}\b",
        Check::Luhn,
    ),
    ("us_ssn", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", Check::Ssn),
    (
        "email",
        // The local part is bounded so a long run of letters is not held.
        r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
        Check::None,
    ),
    (
        "phone",
        concat!(
            // US: (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567.
            r"(?:\+1[ .-]?)?(?:\([0-9]{3}\) ?|\b[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}\b",
            // International: +CC, then 7 to 15 digits with single separators.
            r"|\+[1-9][0-9]{0,2}[ .-]?[0-9](?:[ .-]?[0-9]){6,14}\b",
        ),
        Check::None,
    ),
];

/// Compiles `regex` into an anchored leftmost-first DFA. `utf8` keeps the
/// regex to valid UTF-8 (operator patterns); errors are one line.
pub fn build(regex: &str, utf8: bool) -> Result<dense::DFA<Vec<u32>>, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .nest_limit(64)
        .utf8(utf8)
        .build()
        .parse(regex)
        .map_err(|e| one_line(&e.to_string()))?;
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .which_captures(WhichCaptures::None)
                .utf8(utf8)
                .nfa_size_limit(Some(1 << 20)),
        )
        .build_from_hir(&ascii_word_boundaries(hir))
        .map_err(|e| format!("too large: {e}"))?;
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .match_kind(MatchKind::LeftmostFirst)
                .start_kind(StartKind::Anchored)
                .dfa_size_limit(Some(2 << 20))
                .determinize_size_limit(Some(2 << 20)),
        )
        .build_from_nfa(&nfa)
        .map_err(|e| format!("too large: {e}"))
}

/// The last line of a (multi-line, caret-pointing) regex error.
fn one_line(s: &str) -> String {
    let line = s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s);
    line.trim().to_string()
}

/// Rewrites Unicode word boundaries (`\b`, `\B`, `\<`, `\>`, ...) into
/// their ASCII forms, which a DFA supports on any input; everything else is
/// left as written.
pub fn ascii_word_boundaries(hir: Hir) -> Hir {
    if !hir.properties().look_set().contains_word_unicode() {
        return hir;
    }
    match hir.into_kind() {
        HirKind::Look(look) => Hir::look(match look {
            Look::WordUnicode => Look::WordAscii,
            Look::WordUnicodeNegate => Look::WordAsciiNegate,
            Look::WordStartUnicode => Look::WordStartAscii,
            Look::WordEndUnicode => Look::WordEndAscii,
            Look::WordStartHalfUnicode => Look::WordStartHalfAscii,
            Look::WordEndHalfUnicode => Look::WordEndHalfAscii,
            other => other,
        }),
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            sub: Box::new(ascii_word_boundaries(*r.sub)),
            ..r
        }),
        HirKind::Capture(c) => Hir::capture(Capture {
            sub: Box::new(ascii_word_boundaries(*c.sub)),
            ..c
        }),
        HirKind::Concat(subs) => Hir::concat(subs.into_iter().map(ascii_word_boundaries).collect()),
        HirKind::Alternation(subs) => {
            Hir::alternation(subs.into_iter().map(ascii_word_boundaries).collect())
        }
        // Leaves without a Unicode word boundary returned early above.
        HirKind::Literal(l) => Hir::literal(l.0),
        HirKind::Class(c) => Hir::class(c),
        HirKind::Empty => Hir::empty(),
    }
}
