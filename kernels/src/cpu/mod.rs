//! CPU feature selection and the SIMD implementations.
//!
//! [`isa`] is probed once per process. `PALISADE_KERNELS_ISA=scalar` forces
//! the scalar path and `PALISADE_KERNELS_ISA=avx2` caps it at AVX2 (used by
//! tests, benchmarks and for debugging).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Isa {
    /// Portable Rust, the reference.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// AVX2 plus AVX-512 F/BW and VNNI: the quantized matmul multiplies two
    /// blocks per instruction with `vpdpbusd`; everything else uses AVX2.
    Avx512,
}

impl Isa {
    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512-vnni",
        }
    }

    /// Whether the AVX2 + FMA + F16C kernels may run.
    pub fn avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }
}

/// The instruction set the kernels use: the best this CPU supports, probed
/// once, unless `PALISADE_KERNELS_ISA` or [`use_isa`] lowered it.
pub fn isa() -> Isa {
    static PROBED: OnceLock<()> = OnceLock::new();
    PROBED.get_or_init(|| {
        let isa = match std::env::var("PALISADE_KERNELS_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") if detect().avx2() => Isa::Avx2,
            _ => detect(),
        };
        CURRENT.store(isa as u8, Ordering::Relaxed);
    });
    match CURRENT.load(Ordering::Relaxed) {
        0 => Isa::Scalar,
        1 => Isa::Avx2,
        _ => Isa::Avx512,
    }
}

static CURRENT: AtomicU8 = AtomicU8::new(0);

/// Switches the whole process to `isa` (benchmarks compare paths in one
/// run). Refuses, returning `false`, an instruction set this CPU lacks.
/// Activations must be prepared again after a switch.
pub fn use_isa(isa: Isa) -> bool {
    let best = detect();
    let ok = match isa {
        Isa::Scalar => true,
        Isa::Avx2 => best.avx2(),
        Isa::Avx512 => best == Isa::Avx512,
    };
    if ok {
        self::isa();
        CURRENT.store(isa as u8, Ordering::Relaxed);
    }
    ok
}

/// What the hardware supports, ignoring the environment override.
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512;
            }
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}
