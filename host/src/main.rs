//! The `palisade` command line.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use palisade::bench::{BenchArgs, run_bench};
use palisade::config::{LogFormat, ServeConfig, ServeFlags};
use palisade::generate::{GenerateArgs, run_chat, run_generate};
use palisade::plugins::policy::PluginKind;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "An OpenAI-compatible LLM inference server with WebAssembly security plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the OpenAI-compatible HTTP server.
    Serve {
        #[command(flatten)]
        flags: ServeFlags,
    },
    /// Check what `serve` with the same flags would fail on (exits
    /// non-zero when a check fails).
    Doctor {
        #[command(flatten)]
        flags: ServeFlags,
        /// Print a JSON array of {check, status, detail}.
        #[arg(long)]
        json: bool,
    },
    /// Model supply chain: write and verify manifests of model files.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Measure what a route's plugin stages cost (request side and per
    /// streamed chunk).
    BenchPlugins {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The route whose stages to run.
        #[arg(long, default_value = "/v1/chat/completions")]
        route: String,
        /// API key to authenticate with.
        #[arg(long, default_value = "")]
        key: String,
        /// Requests to time.
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
        /// Chunks per stream for the output filters.
        #[arg(long, default_value_t = 256)]
        chunks: usize,
    },
    /// Manage API key files (the api-key plugin reads them).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Write and test plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Run tool plugins directly (for operators testing a sandbox).
    Tool {
        #[command(subcommand)]
        command: ToolCommand,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Print every route the server registers, one `METHOD PATH` per line
    /// (what the policy must cover; the attack tests probe each).
    Routes,
    /// Print the configuration reference (Markdown).
    ConfigReference,
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Stream one completion to standard output (the completion only).
    Generate {
        /// GGUF file or Hugging Face model directory (default: the cached
        /// SmolLM2-135M-Instruct Q4_1).
        #[arg(long)]
        model: Option<PathBuf>,
        /// A tokenizer.json to use instead of the model's.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Send the prompt as a user message through the chat template.
        #[arg(long)]
        chat: bool,
        /// System message (with --chat).
        #[arg(long)]
        system: Option<String>,
        /// Most tokens to generate.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Nucleus sampling threshold.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Keep only the k most likely tokens (0: off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Random seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Stop string (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Compute threads (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Chat with the model on the command line (one line per turn).
    Chat {
        /// GGUF file or Hugging Face model directory (default: the cached
        /// SmolLM2-135M-Instruct Q4_1).
        #[arg(long)]
        model: Option<PathBuf>,
        /// System message.
        #[arg(long)]
        system: Option<String>,
        /// Most tokens per reply.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Sampling temperature; 0 is greedy.
        #[arg(long, default_value_t = 0.7)]
        temperature: f32,
        /// Nucleus sampling threshold.
        #[arg(long, default_value_t = 0.9)]
        top_p: f32,
        /// Random seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Compute threads (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Measure prefill and decode speed, optionally next to llama.cpp.
    Bench {
        /// GGUF file (default: the cached default model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Thread counts to measure, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Prompt tokens for prefill.
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        /// Tokens generated for decode.
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Python with llama-cpp-python: also run llama.cpp, alternating.
        #[arg(long)]
        llama_cpp_python: Option<PathBuf>,
        /// The llama.cpp benchmark script.
        #[arg(long, default_value = "scripts/llama_cpp_bench.py")]
        script: PathBuf,
        /// llama.cpp's llama-bench binary: also run llama.cpp, alternating
        /// (wins over --llama-cpp-python).
        #[arg(long)]
        llama_bench: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit file's hash chain: prints the lines verified, or the
    /// first broken line and why (exit 1). An incomplete last line (a
    /// crash mid-write) is tolerated, only at the very end.
    Verify {
        /// The audit file (`audit.jsonl`, or a rotated `audit.jsonl.N`).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write a model's manifest (sha256 and size of every file), JSON.
    Manifest {
        /// GGUF file or model directory.
        model: PathBuf,
        /// Write it here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a model against a manifest (exits non-zero naming each
    /// missing, extra or changed file).
    Verify {
        /// GGUF file or model directory.
        model: PathBuf,
        /// The manifest (from `palisade model manifest`).
        #[arg(long)]
        manifest: PathBuf,
    },
}

fn model(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Manifest { model, out } => {
            let (text, note) = palisade::manifest::write(&model, out.as_deref())?;
            print!("{text}");
            eprint!("{note}");
        }
        ModelCommand::Verify { model, manifest } => {
            let m = palisade::manifest::verify(&model, &manifest)?;
            println!(
                "ok: {} matches {} ({} files, {} bytes)",
                model.display(),
                manifest.display(),
                m.files.len(),
                m.total_size()
            );
        }
    }
    Ok(())
}

fn doctor(flags: &ServeFlags, json: bool) {
    let checks = palisade::doctor::run_flags(flags);
    if json {
        print!("{}", palisade::doctor::json(&checks));
    } else {
        print!("{}", palisade::doctor::human(&checks));
    }
    if palisade::doctor::failed(&checks) {
        std::process::exit(1);
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy (loads and pins every plugin) and print, per
    /// route, the pipeline it runs.
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Scaffold a buildable plugin with recorded test cases.
    New {
        /// Name (a crate name: lower-case, digits, - and _).
        name: String,
        /// The world it implements.
        #[arg(long, value_parser = parse_kind)]
        kind: PluginKind,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run a plugin against recorded requests or streams and print its
    /// verdicts (fails when an expectation in the fixture is not met).
    Test {
        /// The component (.wasm).
        plugin: PathBuf,
        /// The fixture (JSON).
        #[arg(long)]
        fixture: PathBuf,
        /// The world (default: the fixture's `kind`).
        #[arg(long, value_parser = parse_kind)]
        kind: Option<PluginKind>,
    },
}

#[derive(Subcommand)]
enum ToolCommand {
    /// Invoke the policy's tool NAME once with --args, under its limits
    /// and grants; prints the result JSON (exit 0) or why there is none
    /// (exit 1: the tool refused, or the deadline, memory limit or a trap
    /// stopped it).
    Run {
        /// The tool's plugin name in the policy.
        name: String,
        /// The arguments (JSON), e.g. '{"code": "1 + 1"}'.
        #[arg(long = "args")]
        arguments: String,
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
    },
}

fn parse_kind(s: &str) -> Result<PluginKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| "one of authenticator, admission, output-filter, tool".to_string())
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints it alone on the last line (the only time it
    /// is shown).
    Create {
        /// The key file (created, mode 0600, if missing).
        #[arg(long)]
        file: PathBuf,
        /// Name of the key (unique in the file).
        #[arg(long)]
        id: String,
        /// Scopes, comma separated (inference, embeddings, admin, metrics).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Tenant (default: the id).
        #[arg(long)]
        tenant: Option<String>,
        /// Expiry: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or unix seconds.
        #[arg(long)]
        expires: Option<String>,
        /// Models the key may use, comma separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// List the keys (names and metadata; keys are never stored).
    List {
        /// The key file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove a key; it stops working at the server's next reload.
    Revoke {
        /// The key file.
        #[arg(long)]
        file: PathBuf,
        /// Name of the key.
        #[arg(long)]
        id: String,
    },
}

fn keys(command: KeysCommand) -> Result<()> {
    use palisade::keys::{KeyFile, NewKey, parse_date};
    match command {
        KeysCommand::Create {
            file,
            id,
            scopes,
            tenant,
            expires,
            models,
        } => {
            let mut f = KeyFile::load_or_empty(&file)?;
            let expires = expires.as_deref().map(parse_date).transpose()?;
            let key = f.create(NewKey {
                id: id.clone(),
                scopes,
                tenant,
                expires,
                models,
            })?;
            f.save(&file)?;
            eprintln!(
                "created key `{id}` in {}; it is shown once, below (reload the server to use it)",
                file.display()
            );
            println!("{key}");
        }
        KeysCommand::List { file } => print!("{}", KeyFile::load(&file)?.table()),
        KeysCommand::Revoke { file, id } => {
            let mut f = KeyFile::load(&file)?;
            f.revoke(&id)?;
            f.save(&file)?;
            eprintln!(
                "revoked `{id}`; it stops working when the server reloads (SIGHUP or POST /admin/reload)"
            );
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
}

/// Large allocations get their own mapping from this size up.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Tunes glibc's malloc for a long-running server, unless the operator set
/// the matching `MALLOC_*` variable:
/// - arenas are capped at the core count (at least 2; glibc's default is 8
///   per core);
/// - allocations from 4 MiB up are mapped on their own and unmapped when
///   freed (`M_MMAP_THRESHOLD`, the heap trimmed above twice that). glibc's
///   default threshold rises to the size of the largest mapped block freed
///   (up to 32 MiB); once the code interpreter's start-up had raised it, the
///   blocks below it went into arena heaps that were never given back: 388
///   MB of anonymous memory with the interpreter in the policy against 24
///   MB with the threshold fixed, measured on 2 cores.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let settings = [
        (
            "MALLOC_ARENA_MAX",
            libc::M_ARENA_MAX,
            i32::try_from(cores.max(2)).unwrap_or(i32::MAX),
        ),
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            2 * MMAP_THRESHOLD,
        ),
    ];
    for (var, param, value) in settings {
        if std::env::var_os(var).is_some() {
            continue;
        }
        // SAFETY: `mallopt` only sets an allocator parameter; it runs first
        // in `main`, before any thread that could allocate concurrently
        // exists.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(param, value);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() -> Result<()> {
    tune_malloc();
    let cli = Cli::parse();
    if let Command::Serve { flags } = &cli.command {
        let cfg = ServeConfig::load(flags)?;
        init_logging(cfg.server.log_format);
        // One async worker: the HTTP side is light, and every extra busy thread
        // steals time from the engine's compute threads on small machines.
        let workers: usize = std::env::var("PALISADE_ASYNC_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .enable_all()
            .build()?;
        rt.block_on(palisade::serve::run(cfg))?;
        return Ok(());
    }
    init_logging(LogFormat::Human);
    match cli.command {
        Command::Serve { .. } => unreachable!("handled above"),
        Command::Doctor { flags, json } => doctor(&flags, json),
        Command::Model { command } => model(command)?,
        Command::Openapi => print!("{}", palisade::openapi::document()),
        Command::Routes => {
            for (method, path) in palisade::server::ROUTES {
                println!("{method} {path}");
            }
        }
        Command::Keys { command } => keys(command)?,
        Command::Plugin {
            command: PluginCommand::New { name, kind, dir },
        } => {
            let d = palisade::plugins::scaffold::create(&dir, &name, kind)?;
            eprintln!(
                "created {}: `make test` builds it and runs tests/fixture.json",
                d.display()
            );
        }
        Command::Plugin {
            command:
                PluginCommand::Test {
                    plugin,
                    fixture,
                    kind,
                },
        } => print!(
            "{}",
            palisade::plugins::devkit::run(&plugin, &fixture, kind)?
        ),
        Command::Tool {
            command:
                ToolCommand::Run {
                    name,
                    arguments,
                    policy,
                },
        } => println!(
            "{}",
            palisade::plugins::tool::run(&policy, &name, &arguments)?
        ),
        Command::BenchPlugins {
            policy,
            route,
            key,
            iterations,
            chunks,
        } => {
            print!(
                "{}",
                palisade::plugins::bench::run(&policy, &route, &key, iterations, chunks)?
            )
        }
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => print!("{}", palisade::plugins::check::run(&file)?),
        Command::ConfigReference => print!("{}", palisade::config::reference_markdown()),
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => println!("{}", palisade::audit::verify::verify(&file)?),
        Command::Generate {
            model,
            tokenizer,
            prompt,
            chat,
            system,
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            stop,
            threads,
        } => {
            let args = GenerateArgs {
                model,
                tokenizer,
                prompt,
                chat,
                system,
                max_tokens,
                temperature,
                top_p,
                top_k,
                seed,
                threads,
                stop,
            };
            run_generate(&args, &mut std::io::stdout().lock())?;
        }
        Command::Chat {
            model,
            system,
            max_tokens,
            temperature,
            top_p,
            seed,
            threads,
        } => {
            let args = GenerateArgs {
                model,
                system,
                max_tokens,
                temperature,
                top_p,
                seed,
                threads,
                chat: true,
                ..Default::default()
            };
            run_chat(
                &args,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
        }
        Command::Bench {
            model,
            threads,
            prompt_tokens,
            gen_tokens,
            reps,
            llama_cpp_python,
            script,
            llama_bench,
        } => {
            let table = run_bench(&BenchArgs {
                model,
                threads,
                prompt_tokens,
                gen_tokens,
                reps,
                llama_cpp_python,
                script,
                llama_bench,
            })?;
            println!("{table}");
        }
    }
    Ok(())
}
