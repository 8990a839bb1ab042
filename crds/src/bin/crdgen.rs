//! Writes the generated CRDs: `crdgen` prints them as one multi-document stream;
//! `crdgen --write DIR...` writes one file per CRD into each directory.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crdgen: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let files = airssys_crds::generate::crd_files()?;
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {
            let mut out = std::io::stdout().lock();
            for (i, (_, yaml)) in files.iter().enumerate() {
                if i > 0 {
                    out.write_all(b"---\n")?;
                }
                out.write_all(yaml.as_bytes())?;
            }
        }
        Some("--write") => {
            let dirs: Vec<PathBuf> = args.map(PathBuf::from).collect();
            if dirs.is_empty() {
                return Err("--write needs at least one directory".into());
            }
            for dir in dirs {
                std::fs::create_dir_all(&dir)?;
                for (name, yaml) in &files {
                    std::fs::write(dir.join(name), yaml)?;
                }
            }
        }
        Some(other) => {
            return Err(
                format!("unknown argument {other:?}; usage: crdgen [--write DIR...]").into(),
            );
        }
    }
    Ok(())
}
