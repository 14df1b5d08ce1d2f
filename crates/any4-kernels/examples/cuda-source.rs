//! Writes the CUDA C++ source of every kernel (as an H200 would compile it) into a directory,
//! with `kernels.json` describing them: `cargo xtask sass` drives this, then nvcc.
//!
//! `cargo run -p any4-kernels --example cuda-source --features cuda-source -- DIR [N K G]`

use any4_kernels::WeightShape;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: cuda-source DIR [N K G]");
        std::process::exit(2);
    };
    let num = |i: usize, default: usize| {
        args.get(i)
            .map_or(Ok(default), |v| v.parse::<usize>())
            .unwrap_or_else(|_| {
                eprintln!("cuda-source: `{}` is not a number", args[i]);
                std::process::exit(2);
            })
    };
    let shape = WeightShape::new(num(1, 8192), num(2, 8192), num(3, 128)).unwrap_or_else(|e| {
        eprintln!("cuda-source: {e}");
        std::process::exit(2);
    });
    let dir = std::path::Path::new(dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("cuda-source: {}: {e}", dir.display());
        std::process::exit(1);
    }
    let mut index = Vec::new();
    for k in any4_kernels::cuda_source::sources(shape) {
        let path = dir.join(format!("{}.cu", k.name));
        if let Err(e) = std::fs::write(&path, &k.source) {
            eprintln!("cuda-source: {}: {e}", path.display());
            std::process::exit(1);
        }
        index.push(format!(
            "{{\"name\": \"{}\", \"weights_per_iter\": {}, \"loads128_per_iter\": {}, \"hmma_per_iter\": {}, \"what\": \"{}\"}}",
            k.name, k.weights_per_iter, k.loads128_per_iter, k.hmma_per_iter, k.what
        ));
    }
    let json = format!("[\n  {}\n]\n", index.join(",\n  "));
    if let Err(e) = std::fs::write(dir.join("kernels.json"), json) {
        eprintln!("cuda-source: kernels.json: {e}");
        std::process::exit(1);
    }
    eprintln!("cuda-source: {} kernels in {}", index.len(), dir.display());
}
