//! Opening a device: checking the CUDA libraries are there, creating the
//! context, compiling the kernels once with NVRTC and looking up their
//! functions; plus the device-resident KV pool.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts};
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::KV_BLOCK_SIZE;
use crate::KernelError;

/// The CUDA C source of every kernel.
const SOURCE: &str = include_str!("kernels.cu");

/// One CUDA device with the kernels compiled and loaded.
///
/// Work is queued on the device's default stream; every wrapper waits for
/// its result, so calls from one thread run in order.
#[derive(Debug)]
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) kernels: Kernels,
    name: String,
}

/// The kernel functions, looked up once at open.
#[derive(Debug)]
pub(super) struct Kernels {
    pub(super) rms_norm: CudaFunction,
    pub(super) silu_mul: CudaFunction,
    pub(super) rope: CudaFunction,
    pub(super) softmax_rows: CudaFunction,
    pub(super) q8_0_matvec: CudaFunction,
    pub(super) paged_attention: CudaFunction,
}

impl Kernels {
    fn load(module: &Arc<CudaModule>) -> Result<Self, KernelError> {
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| KernelError::Cuda(format!("loading kernel {name}: {}", describe(&e))))
        };
        Ok(Kernels {
            rms_norm: f("rms_norm_f32")?,
            silu_mul: f("silu_mul_f32")?,
            rope: f("rope_f32")?,
            softmax_rows: f("softmax_rows_f32")?,
            q8_0_matvec: f("q8_0_matvec_f32")?,
            paged_attention: f("paged_attention_decode_f16")?,
        })
    }
}

impl CudaDevice {
    /// Opens device `ordinal` and compiles the kernels for it.
    ///
    /// Returns [`KernelError::NoCuda`] when `libcuda` or `libnvrtc` cannot be
    /// loaded or the driver cannot open the device (no GPU, bad ordinal),
    /// and [`KernelError::Cuda`] when the kernels fail to compile or load.
    /// Never panics for a missing GPU.
    pub fn open(ordinal: usize) -> Result<Self, KernelError> {
        check_libraries()?;
        let ctx = guarded("the CUDA driver", || CudaContext::new(ordinal))?.map_err(|e| {
            KernelError::NoCuda(format!("cannot open device {ordinal}: {}", describe(&e)))
        })?;
        let name = ctx.name().map_err(cuda("cuDeviceGetName"))?;
        // PTX for the device's own architecture; an NVRTC older than the GPU
        // rejects that, and its default architecture is JIT-compiled by the
        // driver instead.
        let cc = ctx
            .compute_capability()
            .map_err(cuda("cuDeviceGetAttribute"))?;
        let cc = (cc.0.max(0) as u32, cc.1.max(0) as u32);
        let ptx = match guarded("NVRTC", || compile(Some(cc)))? {
            Ok(ptx) => ptx,
            Err(_) => guarded("NVRTC", || compile(None))?.map_err(compile_error)?,
        };
        let module = ctx
            .load_module(ptx)
            .map_err(cuda("loading the kernels' PTX"))?;
        let kernels = Kernels::load(&module)?;
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            kernels,
            name,
        })
    }

    /// The device's name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// Uploads one layer's paged KV cache: `k` and `v` are laid out
    /// `[block][pos_in_block][kv_head][head_dim]` with
    /// [`KV_BLOCK_SIZE`] positions per block.
    pub fn upload_kv_pool(
        &self,
        k: &[f16],
        v: &[f16],
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<KvPool, KernelError> {
        let block = KV_BLOCK_SIZE * n_kv_heads * head_dim;
        if block == 0 || k.is_empty() || k.len() != v.len() || !k.len().is_multiple_of(block) {
            return Err(KernelError::Shape(format!(
                "upload_kv_pool: k has {} values and v {}; both must be the same non-zero \
                 multiple of {KV_BLOCK_SIZE} x {n_kv_heads} kv heads x {head_dim} head_dim",
                k.len(),
                v.len()
            )));
        }
        let up = |x: &[f16]| {
            self.stream
                .clone_htod(x.reinterpret_cast())
                .map_err(cuda("upload_kv_pool: copy to device"))
        };
        Ok(KvPool {
            k: up(k)?,
            v: up(v)?,
            n_blocks: k.len() / block,
            n_kv_heads,
            head_dim,
        })
    }
}

/// One layer's paged KV cache in device memory (`f16` keys and values as
/// raw bits), made by [`CudaDevice::upload_kv_pool`].
#[derive(Debug)]
pub struct KvPool {
    pub(super) k: CudaSlice<u16>,
    pub(super) v: CudaSlice<u16>,
    n_blocks: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl KvPool {
    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Key/value heads per position.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }

    /// Size of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// Compiles the kernels to PTX with NVRTC and returns the PTX text, for
/// compute capability `arch` (`Some((8, 0))` for `compute_80`) or NVRTC's
/// default. Needs only `libnvrtc`, no driver and no GPU: it checks that the
/// CUDA C source builds with the NVRTC installed here. [`CudaDevice::open`]
/// does the same compilation for the device's capability.
pub fn compile_kernels(arch: Option<(u32, u32)>) -> Result<String, KernelError> {
    check_nvrtc()?;
    let ptx = guarded("NVRTC", || compile(arch))?.map_err(compile_error)?;
    // `to_src` only panics for CUBIN images or non-UTF-8 text; NVRTC's
    // output here is PTX, which is ASCII.
    Ok(ptx.to_src())
}

/// Fails with `NoCuda` unless both libraries cudarc loads lazily are
/// present: cudarc panics on first use when one is missing.
fn check_libraries() -> Result<(), KernelError> {
    // SAFETY: this only tries `dlopen` on the usual names of the library
    // (and closes it again); loading a shared library runs its
    // initializers, which is what any use of CUDA does anyway.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(KernelError::NoCuda(
            "the NVIDIA driver library (libcuda.so) was not found".into(),
        ));
    }
    check_nvrtc()
}

fn check_nvrtc() -> Result<(), KernelError> {
    // SAFETY: as in `check_libraries`, a `dlopen` probe of libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(KernelError::NoCuda(
            "the CUDA runtime compiler (libnvrtc.so, CUDA 12) was not found".into(),
        ));
    }
    Ok(())
}

/// Runs `f`, turning a panic (cudarc's way of reporting a library or
/// symbol it cannot load) into `NoCuda`. The default panic hook still
/// prints the message; `check_libraries` makes this path rare.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, KernelError> {
    // AssertUnwindSafe: after a panic nothing `f` touched is used again; the
    // caller returns the error straight away.
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("panic without a message");
        KernelError::NoCuda(format!("{what} could not be loaded: {msg}"))
    })
}

/// NVRTC on the kernel source, for a virtual architecture (`compute_XY`)
/// or NVRTC's default; the driver turns the PTX into machine code for the
/// actual GPU when the module is loaded.
fn compile(arch: Option<(u32, u32)>) -> Result<Ptx, CompileError> {
    let opts = CompileOptions {
        name: Some("palisade_kernels.cu".into()),
        options: arch
            .map(|(major, minor)| format!("--gpu-architecture=compute_{major}{minor}"))
            .into_iter()
            .collect(),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts)
}

fn compile_error(e: CompileError) -> KernelError {
    match e {
        CompileError::CompileError { log, .. } => KernelError::Cuda(format!(
            "NVRTC failed to compile the kernels:\n{}",
            log.to_string_lossy()
        )),
        other => KernelError::Cuda(format!("NVRTC: {other}")),
    }
}

/// `NAME: description` of a driver error.
pub(super) fn describe(e: &DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(n), Ok(t)) => format!("{n}: {t}"),
        _ => format!("{:?}", e.0),
    }
}

/// Maps a driver error of the call `what` to `KernelError::Cuda`.
pub(super) fn cuda(what: &'static str) -> impl Fn(DriverError) -> KernelError {
    move |e| KernelError::Cuda(format!("{what}: {}", describe(&e)))
}
