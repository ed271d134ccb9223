//! Quantized matmul throughput on one thread for a few batch sizes, AVX2
//! against AVX-512 VNNI (when the CPU has it) in the same run: the two
//! alternate, so a noisy machine slows both alike.
//!
//! ```text
//! cargo run --release -p palisade-kernels --example matmul_bench -- [ROWS] [COLS]
//! ```
//!
//! Prints the median of 15 runs as G multiply-adds per second for `Q4_1`,
//! `Q4_0` and `Q8_0` weights and 1, 4, 8 and 16 activation rows, and the
//! median of the per-run ratios.

use std::time::Instant;

use palisade_kernels::cpu::{Isa, detect, use_isa};
use palisade_kernels::matmul::{Activations, WeightRef, matmul};
use palisade_kernels::pool::ThreadPool;
use palisade_kernels::quant::{WeightType, quantize_row};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ROWS and COLS are numbers"))
        .collect();
    let rows = args.first().copied().unwrap_or(1536);
    let cols = args.get(1).copied().unwrap_or(576);
    let pool = ThreadPool::new(1);
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&i| use_isa(i))
        .collect();
    println!(
        "{rows} x {cols}, one thread, best isa here: {}",
        detect().name()
    );
    let mut seed = 1u32;
    let mut rand = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    println!(
        "| type | rows | {} | ratio |",
        isas.iter()
            .map(|i| format!("{} GMAC/s", i.name()))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|{}---|", "---|".repeat(isas.len()));
    for ty in [WeightType::Q4_1, WeightType::Q4_0, WeightType::Q8_0] {
        let wf: Vec<f32> = (0..rows * cols).map(|_| rand()).collect();
        let bytes: Vec<u8> = wf.chunks(cols).flat_map(|r| quantize_row(ty, r)).collect();
        let w = WeightRef::new(ty, &bytes, rows, cols).expect("weights");
        for n in [1, 4, 8, 16] {
            let x: Vec<f32> = (0..n * cols).map(|_| rand()).collect();
            let mut y = vec![0f32; n * rows];
            let mut times = vec![Vec::new(); isas.len()];
            for _ in 0..15 {
                for (k, &isa) in isas.iter().enumerate() {
                    use_isa(isa);
                    let acts = Activations::quantize(&x, n, cols, w.activation_format());
                    let t0 = Instant::now();
                    for _ in 0..10 {
                        matmul(&pool, &w, &acts, &mut y);
                    }
                    times[k].push(t0.elapsed().as_secs_f64() / 10.0);
                }
            }
            let macs = (rows * cols * n) as f64;
            let mut ratios: Vec<f64> = (0..15)
                .map(|r| times[0][r] / times[isas.len() - 1][r])
                .collect();
            let cells: Vec<String> = times
                .iter_mut()
                .map(|t| format!("{:.2}", macs / median(t) / 1e9))
                .collect();
            println!(
                "| {} | {n} | {} | {:.2} |",
                ty.name(),
                cells.join(" | "),
                median(&mut ratios)
            );
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
