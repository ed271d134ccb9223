//! Stop strings over streamed text: text is released only once it can no
//! longer be the start of a stop string, so a stop string split across
//! tokens is still caught and never emitted.

/// Tracks generated text against a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Text received but not yet released.
    held: String,
}

/// What happened when text was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopEvent {
    /// Text that is safe to release (possibly empty).
    Text(String),
    /// A stop string was found: release this text, then stop.
    Stop(String),
}

impl StopStrings {
    /// Watches for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds generated text.
    pub fn push(&mut self, text: &str) -> StopEvent {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopEvent::Text(std::mem::take(&mut self.held));
        }
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopEvent::Stop(out);
        }
        // Hold back the longest suffix that is a proper prefix of a stop.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopEvent::Text(out)
    }

    /// Releases held text at the end of generation (no stop string came).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_stop_string_is_caught_and_not_emitted() {
        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("hello E"), StopEvent::Text("hello ".into()));
        assert_eq!(s.push("N"), StopEvent::Text("".into()));
        assert_eq!(s.push("D and more"), StopEvent::Stop("".into()));
    }

    #[test]
    fn false_start_is_released() {
        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("EN"), StopEvent::Text("".into()));
        assert_eq!(s.push("X"), StopEvent::Text("ENX".into()));
        assert_eq!(s.push("E"), StopEvent::Text("".into()));
        assert_eq!(s.finish(), "E");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut s = StopStrings::new(vec!["bb".into(), "a\n".into()]);
        assert_eq!(s.push("xa\nbb"), StopEvent::Stop("x".into()));
    }

    #[test]
    fn multibyte_prefixes() {
        let mut s = StopStrings::new(vec!["é!".into()]);
        assert_eq!(s.push("caf"), StopEvent::Text("caf".into()));
        assert_eq!(s.push("é"), StopEvent::Text("".into()));
        assert_eq!(s.push("!"), StopEvent::Stop("".into()));
    }
}
