//! Detectors one by one, operator patterns and abort mode.

use crate::config::Settings;
use crate::detectors::{iban, luhn, ssn};
use crate::scan::{Engine, Filter, Verdict};

pub(crate) fn engine(cfg: &[(&str, &str)]) -> Engine {
    Settings::parse(cfg.iter().copied())
        .unwrap()
        .compile()
        .unwrap()
}

pub(crate) fn whole(e: &Engine, text: &str) -> String {
    match e.redact(text) {
        Verdict::Emit(s) => s,
        Verdict::Abort(r) => panic!("aborted: {r}"),
    }
}

/// Every case as `(text, expected)` through the default engine, whole and
/// one character per chunk.
fn check(cases: &[(&str, &str)]) {
    let e = engine(&[]);
    for (text, want) in cases {
        assert_eq!(whole(&e, text), *want, "whole: {text:?}");
        assert_eq!(
            crate::stream_tests::by_chars(&e, text),
            *want,
            "streamed: {text:?}"
        );
    }
}

/// `text` comes out unchanged.
fn clean(texts: &[&str]) {
    let cases: Vec<(&str, &str)> = texts.iter().map(|t| (*t, *t)).collect();
    check(&cases);
}

#[test]
fn credit_cards() {
    check(&[
        ("card 4111 1111 1111 1111.", "card [REDACTED:credit_card]."),
        ("4111-1111-1111-1111", "[REDACTED:credit_card]"),
        ("pay 4111111111111111 now", "pay [REDACTED:credit_card] now"),
        ("amex 378282246310005", "amex [REDACTED:credit_card]"),
        ("13: 4222222222222", "13: [REDACTED:credit_card]"),
        ("19: 6011 1111 1111 1111 110", "19: [REDACTED:credit_card]"),
        (
            "mixed 4012-8888 8888-1881 ok",
            "mixed [REDACTED:credit_card] ok",
        ),
        // The longest valid prefix wins over a longer Luhn failure.
        (
            "4111 1111 1111 1111 2 times",
            "[REDACTED:credit_card] 2 times",
        ),
    ]);
    clean(&[
        "card 4111 1111 1111 1112 fails Luhn",
        "4111-1111-1111-1113",
        "12 digits 411111111111",
        "double  gap 4111  1111  1111  1111",
        "run 41111111111111111111111111 too long",
        "zeros 0000 0000 0000 0000",
        "order #A4111111111111111",
    ]);
}

#[test]
fn ssns() {
    check(&[
        ("ssn 123-45-6789.", "ssn [REDACTED:us_ssn]."),
        ("(078-05-1120)", "([REDACTED:us_ssn])"),
    ]);
    clean(&[
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "1234-56-7890",
        "123-45-67890",
    ]);
}

#[test]
fn emails() {
    check(&[
        ("mail bob@example.com.", "mail [REDACTED:email]."),
        ("<alice.smith+tag@mail.example.co.uk>", "<[REDACTED:email]>"),
        ("x_y-z@sub-domain.io, next", "[REDACTED:email], next"),
    ]);
    clean(&[
        "a@b",
        "no at sign.com",
        "trailing@",
        "@example.com",
        "user@host.c",
    ]);
}

#[test]
fn phones() {
    check(&[
        ("call (555) 123-4567 now", "call [REDACTED:phone] now"),
        ("call 555-123-4567", "call [REDACTED:phone]"),
        ("or 555.123.4567!", "or [REDACTED:phone]!"),
        ("US +1 555 123 4567.", "US [REDACTED:phone]."),
        ("UK +44 20 7946 0958", "UK [REDACTED:phone]"),
        ("DE +4915112345678", "DE [REDACTED:phone]"),
    ]);
    clean(&[
        "555-1234",
        "12-34-56",
        "+12 345",
        "call 555-123-456",
        "(555) 123-45678",
    ]);
}

#[test]
fn ibans() {
    check(&[
        ("iban DE89 3704 0044 0532 0130 00.", "iban [REDACTED:iban]."),
        ("GB82WEST12345698765432", "[REDACTED:iban]"),
        ("FR14 2004 1010 0505 0001 3M02 606", "[REDACTED:iban]"),
        ("NO9386011117947 ok", "[REDACTED:iban] ok"),
    ]);
    clean(&[
        "DE88 3704 0044 0532 0130 00",
        "GB82WEST12345698765433",
        "DE00 0000 0000",
        "de89 3704 0044 0532 0130 00",
    ]);
}

#[test]
fn aws_keys() {
    check(&[
        (
            "key AKIAIOSFODNN7EXAMPLE.",
            "key [REDACTED:aws_access_key].",
        ),
        ("ASIA1234567890ABCDEF", "[REDACTED:aws_access_key]"),
    ]);
    clean(&[
        "AKIAIOSFODNN7EXAMPL",
        "AKIAIOSFODNN7EXAMPLEX",
        "XKIAIOSFODNN7EXAMPLE",
        "akiaiosfodnn7example",
    ]);
}

#[test]
fn private_keys() {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----";
    let text = format!("key:\n{pem}\ndone");
    let open = "x -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    let ec = "-----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY----- -----";
    check(&[
        (&text, "key:\n[REDACTED:private_key]\ndone"),
        // An unterminated block is redacted to the end of the text.
        (open, "x [REDACTED:private_key]"),
        (ec, "[REDACTED:private_key] -----"),
    ]);
    clean(&[
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        "----- a rule -----",
    ]);
}

#[test]
fn jwts() {
    check(&[
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.SflKxwRJSM-_eKKF2QT4 end",
            "token [REDACTED:jwt] end",
        ),
        (
            "eyJhbGciOiJub25lIn0.eyJhIjoxfQ. unsigned",
            "[REDACTED:jwt] unsigned",
        ),
    ]);
    clean(&["eyJhbGci.notjwt", "eyJ.eyJ.x", "abc.eyJhbGci.eyJzdWIi"]);
}

#[test]
fn embedded_automata_are_valid() {
    crate::detectors::validate_builtins().unwrap();
}

#[test]
fn checksums() {
    assert!(luhn(b"4111 1111 1111 1111"));
    assert!(!luhn(b"4111 1111 1111 1112"));
    assert!(!luhn(b"0000000000000"));
    assert!(ssn(b"123-45-6789"));
    assert!(!ssn(b"666-45-6789"));
    assert!(iban(b"DE89370400440532013000"));
    assert!(!iban(b"DE89370400440532013001"));
    assert!(!iban(b"DE8937"));
}

#[test]
fn detectors_subset_and_patterns() {
    let e = engine(&[
        ("detectors", r#"["email"]"#),
        (
            "patterns",
            r#"[{"name": "employee_id", "regex": "EMP-\\d{6}", "max_len": 10}]"#,
        ),
    ]);
    let text = "EMP-123456, bob@example.com, 4111 1111 1111 1111, [REDACTED:employee_id]7";
    let want =
        "[REDACTED:employee_id], [REDACTED:email], 4111 1111 1111 1111, [REDACTED:employee_id]7";
    assert_eq!(whole(&e, text), want);
    assert_eq!(crate::stream_tests::by_chars(&e, text), want);
    // Comma-separated lists work too; the empty list turns built-ins off.
    let e = engine(&[("detectors", "us_ssn, email")]);
    assert_eq!(
        whole(&e, "123-45-6789 4111111111111111"),
        "[REDACTED:us_ssn] 4111111111111111"
    );
    let e = engine(&[("detectors", "[]")]);
    assert_eq!(whole(&e, "bob@example.com"), "bob@example.com");
}

#[test]
fn pattern_max_len_bounds_matches() {
    let e = engine(&[
        ("detectors", "[]"),
        (
            "patterns",
            r#"[{"name": "ticket", "regex": "T-[0-9]+", "max_len": 5}]"#,
        ),
    ]);
    // The longest match within 5 bytes; a longer run keeps its tail.
    assert_eq!(
        whole(&e, "T-12 T-123 T-123456"),
        "[REDACTED:ticket] [REDACTED:ticket] [REDACTED:ticket]456"
    );
    let e = engine(&[(
        "patterns",
        r#"[{"name": "p", "regex": "(?i)\\bsecret\\b"}]"#,
    )]);
    assert_eq!(whole(&e, "a SeCrEt, secrets"), "a [REDACTED:p], secrets");
    // `\b` is ASCII: a Unicode word character next to it is a boundary.
    assert_eq!(whole(&e, "ésecret"), "é[REDACTED:p]");
    let big = Settings::parse([(
        "patterns",
        r#"[{"name": "p", "regex": "x", "max_len": 99999}]"#,
    )])
    .unwrap();
    assert_eq!(big.patterns[0].max_len, Some(99999));
    assert!(big.compile().is_ok());
}

#[test]
fn abort_mode() {
    let e = engine(&[("action", "abort")]);
    assert_eq!(
        e.redact("my card is 4111 1111 1111 1111"),
        Verdict::Abort("sensitive data detected: credit_card".into())
    );
    assert_eq!(
        e.redact("fine 4111 1111 1111 1112"),
        Verdict::Emit("fine 4111 1111 1111 1112".into())
    );
    let mut f = Filter::new(Ok(e));
    let mut got = String::new();
    let mut aborted = None;
    for c in "Hello there, mail me at bob@example.com please".chars() {
        match f.filter(0, &c.to_string()) {
            Verdict::Emit(s) => got.push_str(&s),
            Verdict::Abort(r) => {
                aborted = Some(r);
                break;
            }
        }
    }
    // Released before the abort: only text that could not be part of it.
    assert_eq!(got, "Hello there, mail me at ");
    assert_eq!(aborted.as_deref(), Some("sensitive data detected: email"));
    // It stays aborted; the other choices are unaffected.
    assert!(matches!(f.filter(0, "more"), Verdict::Abort(_)));
    assert!(matches!(f.finish(0), Verdict::Abort(_)));
    assert_eq!(f.filter(1, "ok "), Verdict::Emit("ok ".into()));
}
