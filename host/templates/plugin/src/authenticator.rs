//! An authenticator: accepts requests whose `x-team` header names a team
//! listed in the `teams` config value (comma separated), as principal
//! `team:<name>` with the `inference` scope.

use palisade_plugin_sdk::authenticator::Guest;
use palisade_plugin_sdk::authenticator::palisade::plugin::config;
use palisade_plugin_sdk::authenticator::palisade::plugin::types::{Denial, Principal, RequestMeta};

struct Plugin;

impl Guest for Plugin {
    /// Nothing to build ahead of a request: the config is read per call.
    fn prepare() {}

    fn authenticate(r: RequestMeta) -> Result<Principal, Denial> {
        let teams = config::get("teams").unwrap_or_default();
        let team = r.headers.iter().find(|h| h.name == "x-team").map(|h| h.value.as_str());
        match team {
            Some(t) if teams.split(',').any(|x| x.trim() == t) => Ok(Principal {
                id: format!("team:{t}"),
                tenant: t.to_string(),
                scopes: vec!["inference".into()],
                labels: vec![],
            }),
            _ => Err(Denial {
                status: 401,
                code: "unknown_team".into(),
                message: "send an `x-team` header naming a known team".into(),
                headers: vec![],
            }),
        }
    }
}

palisade_plugin_sdk::authenticator::export_authenticator!(Plugin);
