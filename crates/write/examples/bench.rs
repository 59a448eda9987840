//! Helper for `scripts/bench-write.sh`: `bench emit IMAGE [ZSTD_LEVEL XZ_LEVEL]` writes the
//! download artifacts next to IMAGE; `bench decode FILE` decompresses FILE in-process
//! (format detected by content, in parallel where possible) and prints the image size.

use oneimage_artifacts::{emit, ArtifactsSpec};
use std::io::Read;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("emit") => {
            let mut spec = ArtifactsSpec {
                zstd: true,
                xz: true,
                ..Default::default()
            };
            if let (Some(z), Some(x)) = (args.get(3), args.get(4)) {
                spec.zstd_level = z.parse()?;
                spec.xz_level = x.parse()?;
            }
            for p in emit(Path::new(&args[2]), &spec)? {
                println!("{}", p.display());
            }
        }
        Some("decode") => {
            let src = oneimage_write::source::Source::open(Path::new(&args[2]))?;
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let mut r = src.reader(threads, Default::default())?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            println!("{} {total}", src.format);
        }
        _ => anyhow::bail!("usage: bench emit IMAGE [ZSTD_LEVEL XZ_LEVEL] | bench decode FILE"),
    }
    Ok(())
}
