//! Policy files: TOML into the typed, `deny_unknown_fields` policy, then
//! the checks (references, kinds, limits, route coverage). Any text must
//! give a policy or an error, never a panic; a policy that loads covers
//! every route the server registers.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade::plugins::policy::{DEFAULT_PUBLIC, Policy};
use palisade::server::ROUTES;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let routes: Vec<&str> = ROUTES.iter().map(|r| r.1).collect();
    if let Ok(p) = Policy::parse(text, Path::new("/fuzz/policy.toml"), &routes) {
        for r in &routes {
            let rule = p.rule_for(r);
            assert!(
                rule.is_some() || DEFAULT_PUBLIC.contains(r),
                "a loaded policy leaves {r} uncovered"
            );
            if let Some(rule) = rule {
                assert!(rule.public || rule.auth.is_some(), "{r}: neither public nor authenticated");
            }
        }
    }
});
