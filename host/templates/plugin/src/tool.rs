//! A tool: adds the numbers in `{"numbers": [...]}`.

use palisade_plugin_sdk::tool::Guest;
use palisade_plugin_sdk::tool::palisade::plugin::types::ToolDescription;

struct Plugin;

impl Guest for Plugin {
    /// Nothing to build ahead of a request: the config is read per call.
    fn prepare() {}

    fn describe() -> ToolDescription {
        ToolDescription {
            name: "add".into(),
            description: "Adds a list of numbers.".into(),
            parameters_schema: r#"{"type":"object","properties":{"numbers":{"type":"array","items":{"type":"number"}}},"required":["numbers"]}"#.into(),
        }
    }

    fn invoke(arguments: String) -> Result<String, String> {
        // A tiny parser keeps the example dependency-free; real tools use serde_json.
        let inner = arguments
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(nums, _)| nums)
            .ok_or("expected {\"numbers\": [...]}")?;
        let mut sum = 0f64;
        for n in inner.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            sum += n.parse::<f64>().map_err(|_| format!("`{n}` is not a number"))?;
        }
        Ok(format!("{{\"sum\":{sum}}}"))
    }
}

palisade_plugin_sdk::tool::export_tool!(Plugin);
