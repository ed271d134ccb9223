//! Turning logits into the next token: logit bias, repetition / presence /
//! frequency penalties, greedy or temperature sampling with top-k, top-p and
//! min-p, a seeded generator, and log-probabilities with top alternatives.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// Sampling parameters of one request. `Default` is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1: off).
    pub top_p: f32,
    /// Drop tokens below `min_p` times the top probability (0: off).
    pub min_p: f32,
    /// Divides positive / multiplies negative logits of tokens already seen
    /// (prompt and output, llama.cpp style; 1: off).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of generated tokens.
    pub frequency_penalty: f32,
    /// Random seed; same seed and inputs give the same output.
    pub seed: Option<u64>,
    /// Added to the logits of the given tokens.
    pub logit_bias: Vec<(u32, f32)>,
    /// Report the chosen token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

/// Most alternatives reported per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Checks every value's range against a vocabulary of `vocab` tokens.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let bad = |field, message: String| Err(EngineError::InvalidParameter { field, message });
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad(
                "temperature",
                format!("must be between 0 and 2, got {}", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(
                "min_p",
                format!("must be between 0 and 1, got {}", self.min_p),
            );
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 10.0) {
            return bad(
                "repetition_penalty",
                format!("must be in (0, 10], got {}", self.repetition_penalty),
            );
        }
        for (field, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(field, format!("must be between -2 and 2, got {v}"));
            }
        }
        for &(tok, b) in &self.logit_bias {
            if tok as usize >= vocab {
                return bad(
                    "logit_bias",
                    format!("token id {tok} is outside the vocabulary (0..{vocab})"),
                );
            }
            if !(-100.0..=100.0).contains(&b) {
                return bad(
                    "logit_bias",
                    format!("bias for token {tok} must be between -100 and 100, got {b}"),
                );
            }
        }
        if let Some(k) = self.logprobs
            && k > MAX_TOP_LOGPROBS
        {
            return bad(
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}, got {k}"),
            );
        }
        Ok(())
    }
}

/// The chosen token and, when asked for, its log-probability and the most
/// likely alternatives (from the distribution after bias and penalties,
/// before temperature).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// Token id.
    pub token: u32,
    /// Its log-probability (when logprobs were requested).
    pub logprob: Option<f32>,
    /// The most likely tokens with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// Per-sequence sampling state.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each generated token.
    counts: HashMap<u32, u32>,
    /// Tokens seen (prompt and output) for the repetition penalty.
    seen: std::collections::HashSet<u32>,
    probs: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for a sequence whose prompt is `prompt`.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        Sampler {
            params,
            rng,
            counts: HashMap::new(),
            seen,
            probs: Vec::new(),
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        let p = self.params.clone(); // small: logit_bias is usually empty
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
        let (mut logprob, mut top) = (None, Vec::new());
        let lse = p.logprobs.map(|k| {
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
            let lse = max + (sum as f32).ln();
            if k > 0 {
                top = top_k_indices(logits, k)
                    .into_iter()
                    .map(|i| (i, logits[i as usize] - lse))
                    .collect();
            }
            lse
        });
        let greedy = p.temperature == 0.0;
        let token = if greedy {
            argmax(logits)
        } else {
            self.sample_random(logits)
        };
        if let Some(lse) = lse {
            logprob = Some(logits[token as usize] - lse);
        }
        *self.counts.entry(token).or_insert(0) += 1;
        if p.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        Sampled {
            token,
            logprob,
            top,
        }
    }

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        self.probs.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp())),
        );
        let by_prob_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.probs.len() {
            self.probs.select_nth_unstable_by(p.top_k - 1, by_prob_desc);
            self.probs.truncate(p.top_k);
        }
        if p.min_p > 0.0 {
            // The max logit has weight exp(0) = 1 (it survives top-k).
            let floor = p.min_p;
            self.probs.retain(|&(_, w)| w >= floor);
        }
        if p.top_p < 1.0 {
            self.probs.sort_unstable_by(by_prob_desc);
            let total: f32 = self.probs.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let mut keep = self.probs.len();
            for (i, &(_, w)) in self.probs.iter().enumerate() {
                acc += w / total;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.probs.truncate(keep.max(1));
        }
        let total: f32 = self.probs.iter().map(|x| x.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(t, w) in &self.probs {
            if r < w {
                return t;
            }
            r -= w;
        }
        self.probs.last().map(|x| x.0).unwrap_or(0)
    }
}

/// Index of the largest value; the lowest index wins ties.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

fn top_k_indices(xs: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..xs.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        xs[b as usize].total_cmp(&xs[a as usize]).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.sort_unstable_by(|&a, &b| xs[b as usize].total_cmp(&xs[a as usize]).then(a.cmp(&b)));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_picks_argmax_and_reports_logprobs() {
        let mut s = Sampler::new(
            SamplingParams {
                logprobs: Some(3),
                ..Default::default()
            },
            &[],
        );
        let mut l = logits();
        let out = s.sample(&mut l);
        assert_eq!(out.token, argmax(&logits()));
        assert_eq!(out.top.len(), 3);
        assert_eq!(out.top[0].0, out.token);
        assert!(out.top[0].1 >= out.top[1].1 && out.top[1].1 >= out.top[2].1);
        assert!(out.logprob.unwrap() < 0.0);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    temperature: 1.5,
                    seed: Some(seed),
                    ..Default::default()
                },
                &[],
            );
            (0..50)
                .map(|_| s.sample(&mut logits()).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_k: 1,
                seed: Some(3),
                ..Default::default()
            },
            &[],
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits()).token, argmax(&logits()));
        }
    }

    #[test]
    fn top_p_and_min_p_restrict_support() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_p: 0.05,
                seed: Some(4),
                ..Default::default()
            },
            &[],
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits()).token, argmax(&logits()));
        }
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                min_p: 0.5,
                seed: Some(5),
                ..Default::default()
            },
            &[],
        );
        let l = logits();
        let max = l.iter().cloned().fold(f32::MIN, f32::max);
        for _ in 0..50 {
            let t = s.sample(&mut logits()).token as usize;
            assert!(l[t] >= max + 0.5f32.ln() - 1e-4);
        }
    }

    #[test]
    fn logit_bias_and_penalties_steer() {
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(5, 100.0)],
                ..Default::default()
            },
            &[],
        );
        assert_eq!(s.sample(&mut logits()).token, 5);
        let best = argmax(&logits());
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 2.0,
                ..Default::default()
            },
            &[],
        );
        let first = s.sample(&mut logits()).token;
        assert_eq!(first, best);
        // After several picks the penalty pushes the top token down.
        let picks: Vec<u32> = (0..5).map(|_| s.sample(&mut logits()).token).collect();
        assert!(picks.iter().any(|&t| t != best), "{picks:?}");
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 10.0,
                ..Default::default()
            },
            &[best],
        );
        assert_ne!(s.sample(&mut logits()).token, best);
    }

    #[test]
    fn validation_names_the_field() {
        let e = SamplingParams {
            temperature: 3.0,
            ..Default::default()
        }
        .validate(10)
        .unwrap_err()
        .to_string();
        assert!(e.contains("temperature") && e.contains('3'), "{e}");
        let e = SamplingParams {
            logit_bias: vec![(99, 1.0)],
            ..Default::default()
        }
        .validate(10)
        .unwrap_err()
        .to_string();
        assert!(e.contains("99"), "{e}");
    }
}
