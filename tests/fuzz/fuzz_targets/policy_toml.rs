//! Policy files: TOML into the typed, `deny_unknown_fields` policy, then
//! the checks (references, kinds, limits, route coverage). Any text must
//! give a policy or an error, never a panic; a policy that loads covers
//! every route the server registers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| palisade_fuzz::targets::policy_toml(data));
