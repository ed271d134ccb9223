//! Chat templates: the model's Jinja template rendered with minijinja, with
//! the helpers Hugging Face templates use, under hard limits.
//!
//! Limits: the template runs on a fuel budget (each instruction costs
//! fuel, so loops end), a recursion limit, and a cap on output bytes; any of
//! them ending the render is an error, never a hang.

use std::io::Write;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use crate::error::{EngineError, Result};

/// Default cap on rendered prompt bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 4 << 20;
/// Default fuel (minijinja instructions) per render.
pub const DEFAULT_FUEL: u64 = 5_000_000;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    max_output: usize,
    renders_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// JSON the way Python's `json.dumps(ensure_ascii=False)` writes it, which
/// is what Hugging Face's `tojson` filter produces (minijinja's own escapes
/// HTML characters, which would change prompts).
pub fn python_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let nl = |out: &mut String, level: usize| {
        if let Some(i) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', i * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                python_json(item, indent, level + 1, out);
            }
            nl(out, level);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (k, (key, item)) in map.iter().enumerate() {
                if k > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                out.push_str(&serde_json::to_string(key).unwrap_or_default());
                out.push_str(": ");
                python_json(item, indent, level + 1, out);
            }
            nl(out, level);
            out.push('}');
        }
        J::Array(_) => out.push_str("[]"),
        J::Object(_) => out.push_str("{}"),
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let j = serde_json::to_value(&v)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut s = String::new();
    python_json(&j, indent, 0, &mut s);
    Ok(Value::from_safe_string(s))
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)` for templates that print today's date (Llama 3).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let (hh, mm, ss) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    fmt.replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", month)
        .replace("%b", &month[..3])
        .replace("%H", &format!("{hh:02}"))
        .replace("%M", &format!("{mm:02}"))
        .replace("%S", &format!("{ss:02}"))
}

/// A writer that fails once more than `left` bytes were written.
struct Capped {
    buf: Vec<u8>,
    left: usize,
}

impl Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() > self.left {
            return Err(std::io::Error::other(
                "rendered prompt exceeds the size limit",
            ));
        }
        self.left -= b.len();
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compiles `source` with Hugging Face's settings (`trim_blocks`,
    /// `lstrip_blocks`, loop controls) and limits.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        Self::with_limits(source, bos, eos, DEFAULT_MAX_OUTPUT, DEFAULT_FUEL)
    }

    /// Like [`ChatTemplate::new`] with explicit limits.
    pub fn with_limits(
        source: &str,
        bos: &str,
        eos: &str,
        max_output: usize,
        fuel: u64,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(fuel));
        env.set_recursion_limit(64);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::Template(format!("does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            max_output,
            renders_tools: source.contains("tools"),
        })
    }

    /// Whether the template itself renders a `tools` list (Hermes-style
    /// templates do; SmolLM2's does not, and then the server writes the
    /// tools into a system message itself).
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// Renders `messages` (OpenAI-style objects with at least `role` and
    /// `content`). `extra` holds further context (e.g. `tools`).
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        extra: Option<&serde_json::Value>,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let mut ctx = serde_json::Map::new();
        if let Some(serde_json::Value::Object(m)) = extra {
            ctx.extend(m.clone());
        }
        ctx.insert(
            "messages".into(),
            serde_json::Value::Array(messages.to_vec()),
        );
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("bos_token".into(), self.bos.clone().into());
        ctx.insert("eos_token".into(), self.eos.clone().into());
        let mut w = Capped {
            buf: Vec::new(),
            left: self.max_output,
        };
        match tmpl.render_captured_to(serde_json::Value::Object(ctx), &mut w) {
            Ok(_) => String::from_utf8(w.buf)
                .map_err(|_| EngineError::Template("rendered prompt is not UTF-8".into())),
            Err(e) if w.left == 0 || e.kind() == ErrorKind::WriteFailure => Err(
                EngineError::Template(format!("rendered prompt exceeds {} bytes", self.max_output)),
            ),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(EngineError::Template(
                "rendering ran out of its instruction budget (template or input too large)".into(),
            )),
            Err(e) if e.kind() == ErrorKind::InvalidOperation => Err(EngineError::Template(
                e.detail().unwrap_or("invalid operation").to_string(),
            )),
            Err(e) => Err(EngineError::Template(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raise_exception_is_an_error_value() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = t.render(&[], false, None).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }

    #[test]
    fn infinite_work_runs_out_of_fuel() {
        let t = ChatTemplate::with_limits(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
            1 << 20,
            100_000,
        )
        .unwrap();
        let e = t.render(&[], false, None).unwrap_err().to_string();
        assert!(e.contains("budget"), "{e}");
    }

    #[test]
    fn output_is_capped() {
        let t = ChatTemplate::with_limits(
            "{% for m in messages %}{{ m.content }}{% endfor %}",
            "",
            "",
            1000,
            DEFAULT_FUEL,
        )
        .unwrap();
        let msgs = vec![json!({"role": "user", "content": "x".repeat(2000)})];
        let e = t.render(&msgs, false, None).unwrap_err().to_string();
        assert!(e.contains("exceeds 1000 bytes"), "{e}");
    }

    #[test]
    fn message_content_is_not_template_code() {
        let t = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", "", "")
            .unwrap();
        let out = t
            .render(
                &[json!({"role": "user", "content": "{{ 7*7 }}{% raw %}"})],
                false,
                None,
            )
            .unwrap();
        assert_eq!(out, "{{ 7*7 }}{% raw %}");
    }

    #[test]
    fn tojson_matches_python() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", "", "").unwrap();
        let out = t
            .render(&[], false, Some(&json!({"x": {"a": [1, "é<"], "b": {}}})))
            .unwrap();
        assert_eq!(
            out,
            "{\"a\": [1, \"é<\"], \"b\": {}}|{\n  \"a\": [\n    1,\n    \"é<\"\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}", "", "").unwrap();
        assert_eq!(
            t.render(&[json!({"role": "user", "content": "  hi  "})], false, None)
                .unwrap(),
            "HI"
        );
    }
}
