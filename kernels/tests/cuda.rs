//! The CUDA kernels against the CPU reference (`ops`, `quant`), on random
//! inputs. Without a GPU (or without libcuda / libnvrtc) each GPU test
//! prints `skipping: no CUDA device (...)` and passes; without the `cuda`
//! feature, the stub is checked to refuse to open.

#[cfg(not(feature = "cuda"))]
#[test]
fn stub_reports_no_cuda() {
    use palisade_kernels::KernelError;
    use palisade_kernels::cuda::CudaDevice;
    match CudaDevice::open(0) {
        Err(KernelError::NoCuda(msg)) => assert!(msg.contains("`cuda` feature"), "{msg}"),
        other => panic!("expected NoCuda, got {other:?}"),
    }
    assert!(matches!(
        palisade_kernels::cuda::compile_kernels(None),
        Err(KernelError::NoCuda(_))
    ));
}

#[cfg(feature = "cuda")]
mod gpu {
    use half::f16;
    use palisade_kernels::KernelError;
    use palisade_kernels::attention::AttnShape;
    use palisade_kernels::cuda::{CudaDevice, DecodeRow, KV_BLOCK_SIZE, compile_kernels};
    use palisade_kernels::ops::{self, Rope, RopeStyle};
    use palisade_kernels::quant::{WeightType, dequantize_row, quantize_row};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The device, or `None` (after saying why) when there is none.
    fn device() -> Option<CudaDevice> {
        match CudaDevice::open(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("skipping: no CUDA device ({e})");
                None
            }
        }
    }

    fn random(rng: &mut StdRng, n: usize, range: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-range..range)).collect()
    }

    /// Asserts `|a - b| <= abs + rel * |b|` element-wise.
    fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= abs + rel * b.abs(),
                "{what}[{i}]: gpu {a} vs cpu {b} (tolerance {abs} + {rel} relative)"
            );
        }
    }

    /// The CUDA C source compiles with NVRTC (needs only libnvrtc, no GPU)
    /// and the PTX has every kernel the wrappers look up.
    #[test]
    fn kernels_compile_with_nvrtc() {
        let ptx = match compile_kernels(None) {
            Ok(ptx) => ptx,
            Err(KernelError::NoCuda(e)) => {
                eprintln!("skipping: no NVRTC ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let sm80 = compile_kernels(Some((8, 0))).expect("compile for compute_80");
        assert!(
            sm80.contains(".target sm_80"),
            "not compiled for compute_80"
        );
        for name in [
            "rms_norm_f32",
            "silu_mul_f32",
            "rope_f32",
            "softmax_rows_f32",
            "q8_0_matvec_f32",
            "paged_attention_decode_f16",
        ] {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "no kernel {name} in the PTX"
            );
        }
    }

    /// Opening never panics: either a device, or an error value. A
    /// nonsense ordinal is always an error.
    #[test]
    fn open_reports_errors_as_values() {
        let _ = device();
        match CudaDevice::open(1 << 20) {
            Err(KernelError::NoCuda(msg)) => eprintln!("ordinal 2^20: {msg}"),
            other => panic!("expected NoCuda for ordinal 2^20, got {other:?}"),
        }
    }

    /// Tolerance 1e-5 + 1e-5 relative: the GPU sums squares in f32 (tree
    /// order), the CPU in f64.
    #[test]
    fn rms_norm_matches_cpu() {
        let Some(dev) = device() else { return };
        let mut rng = StdRng::seed_from_u64(1);
        for (rows, cols) in [(1, 64), (3, 1000), (5, 4096)] {
            let x = random(&mut rng, rows * cols, 3.0);
            let w = random(&mut rng, cols, 1.0);
            let mut want = vec![0f32; x.len()];
            ops::rms_norm(&x, &w, 1e-5, &mut want);
            let got = dev.rms_norm(&x, &w, 1e-5, rows).expect("rms_norm");
            assert_close("rms_norm", &got, &want, 1e-5, 1e-5);
        }
    }

    /// Tolerance 1e-6 + 1e-5 relative: the same formula; `expf` on the GPU
    /// is within 2 ulp.
    #[test]
    fn silu_mul_matches_cpu() {
        let Some(dev) = device() else { return };
        let mut rng = StdRng::seed_from_u64(2);
        let gate = random(&mut rng, 10_007, 8.0);
        let up = random(&mut rng, 10_007, 2.0);
        let mut want = gate.clone();
        ops::silu_mul(&mut want, &up);
        let got = dev.silu_mul(&gate, &up).expect("silu_mul");
        assert_close("silu_mul", &got, &want, 1e-6, 1e-5);
    }

    /// Tolerance 1e-5 absolute: the angles are the CPU's own; only the
    /// rotation (two products and a sum) is done on the GPU.
    #[test]
    fn rope_matches_cpu_both_styles() {
        let Some(dev) = device() else { return };
        let mut rng = StdRng::seed_from_u64(3);
        let (n_heads, head_dim) = (6, 64);
        let positions = [0usize, 1, 7, 100, 4095];
        let factors: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 / 4.0).collect();
        for (style, dims, ff) in [
            (RopeStyle::Neox, 64, None),
            (RopeStyle::Interleaved, 64, None),
            (RopeStyle::Neox, 32, Some(&factors[..])),
            (RopeStyle::Interleaved, 32, Some(&factors[..])),
        ] {
            let rope = Rope::new(dims, 10_000.0, style, 1.0, ff);
            let x = random(&mut rng, positions.len() * n_heads * head_dim, 2.0);
            let mut want = x.clone();
            let (mut c, mut s) = (vec![0f32; dims / 2], vec![0f32; dims / 2]);
            for (t, &p) in positions.iter().enumerate() {
                rope.angles(p, &mut c, &mut s);
                let row = &mut want[t * n_heads * head_dim..(t + 1) * n_heads * head_dim];
                rope.apply(row, head_dim, &c, &s);
            }
            let got = dev.rope(&rope, &x, head_dim, &positions).expect("rope");
            assert_close(
                &format!("rope {style:?} dims {dims}"),
                &got,
                &want,
                1e-5,
                0.0,
            );
        }
    }

    /// Tolerance 1e-6 + 1e-5 relative: the CPU sums in f64, the GPU in f32.
    #[test]
    fn softmax_rows_matches_cpu() {
        let Some(dev) = device() else { return };
        let mut rng = StdRng::seed_from_u64(4);
        for (rows, cols) in [(1, 5), (4, 257), (2, 32_000)] {
            let x = random(&mut rng, rows * cols, 10.0);
            let mut want = x.clone();
            want.chunks_exact_mut(cols).for_each(|r| {
                ops::softmax(r);
            });
            let got = dev.softmax_rows(&x, cols).expect("softmax_rows");
            assert_close("softmax_rows", &got, &want, 1e-6, 1e-5);
        }
    }

    /// Against the dequantized weights dotted in f64. Tolerance 1e-4
    /// relative to the sum of |w x| (f32 accumulation in a different order).
    #[test]
    fn q8_0_matvec_matches_dequantized() {
        let Some(dev) = device() else { return };
        let mut rng = StdRng::seed_from_u64(5);
        let (rows, cols) = (37, 4096);
        let ty = WeightType::Q8_0;
        let mut w = Vec::new();
        for _ in 0..rows {
            w.extend(quantize_row(ty, &random(&mut rng, cols, 1.0)));
        }
        let x = random(&mut rng, cols, 1.0);
        let got = dev.q8_0_matvec(&w, rows, cols, &x).expect("q8_0_matvec");
        let mut deq = vec![0f32; cols];
        for (r, g) in got.iter().enumerate() {
            let rb = ty.row_bytes(cols);
            dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut deq);
            let want: f64 = deq.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = deq
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum();
            assert!(
                (*g as f64 - want).abs() <= 1e-4 * mag,
                "row {r}: gpu {g} vs cpu {want} (tolerance {})",
                1e-4 * mag
            );
        }
    }

    /// Decode attention over blocks scattered through the pool, with
    /// grouped-query heads, against an f64 reference on the same f16 cache.
    /// Tolerance 1e-4 absolute (values are in [-1, 1]; the GPU works in f32
    /// with an online softmax).
    #[test]
    fn paged_attention_decode_matches_reference() {
        let Some(dev) = device() else { return };
        let mut rng = StdRng::seed_from_u64(6);
        let s = AttnShape {
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 128,
            scale: 1.0 / (128f32).sqrt(),
        };
        let width = s.n_kv_heads * s.head_dim;
        let lens = [1usize, 15, 16, 17, 300];
        let n_blocks = lens
            .iter()
            .map(|l| l.div_ceil(KV_BLOCK_SIZE))
            .sum::<usize>()
            + 5;
        let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.random_range(0..=i));
        }
        let pool_len = n_blocks * KV_BLOCK_SIZE * width;
        let rnd = |rng: &mut StdRng| -> Vec<f16> {
            (0..pool_len)
                .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                .collect()
        };
        let (k, v) = (rnd(&mut rng), rnd(&mut rng));
        let (mut tables, mut rows) = (Vec::new(), Vec::new());
        let mut next = ids.into_iter();
        for &len in &lens {
            rows.push(DecodeRow {
                table: tables.len() as u32,
                len: len as u32,
            });
            tables.extend(next.by_ref().take(len.div_ceil(KV_BLOCK_SIZE)));
        }
        let q = random(&mut rng, rows.len() * s.n_heads * s.head_dim, 1.0);
        let pool = dev
            .upload_kv_pool(&k, &v, s.n_kv_heads, s.head_dim)
            .expect("upload");
        let got = dev
            .paged_attention_decode(&pool, &s, &q, &tables, &rows)
            .expect("attention");

        let group = s.n_heads / s.n_kv_heads;
        let mut want = Vec::with_capacity(q.len());
        for (r, row) in rows.iter().enumerate() {
            let table = &tables[row.table as usize..];
            let at = |p: usize, g: usize| {
                (table[p / KV_BLOCK_SIZE] as usize * KV_BLOCK_SIZE + p % KV_BLOCK_SIZE) * width
                    + g * s.head_dim
            };
            for h in 0..s.n_heads {
                let g = h / group;
                let qh = &q[(r * s.n_heads + h) * s.head_dim..][..s.head_dim];
                let scores: Vec<f64> = (0..row.len as usize)
                    .map(|p| {
                        let kp = &k[at(p, g)..][..s.head_dim];
                        let dot: f64 = qh.iter().zip(kp).map(|(a, b)| *a as f64 * b.to_f64()).sum();
                        dot * s.scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..s.head_dim {
                    let o: f64 = (0..row.len as usize)
                        .map(|p| e[p] * v[at(p, g) + d].to_f64())
                        .sum();
                    want.push((o / sum) as f32);
                }
            }
        }
        assert_close("paged_attention_decode", &got, &want, 1e-4, 0.0);
    }

    /// Inputs that would read out of bounds are refused before launch.
    #[test]
    fn attention_rejects_block_outside_pool() {
        let Some(dev) = device() else { return };
        let s = AttnShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 32,
            scale: 1.0,
        };
        let k = vec![f16::ZERO; KV_BLOCK_SIZE * 32];
        let pool = dev.upload_kv_pool(&k, &k, 1, 32).expect("upload");
        let rows = [DecodeRow { table: 0, len: 3 }];
        let err = dev
            .paged_attention_decode(&pool, &s, &[0.0; 64], &[1], &rows)
            .expect_err("block 1 of a 1-block pool");
        assert!(matches!(err, KernelError::Shape(_)), "{err}");
    }
}
