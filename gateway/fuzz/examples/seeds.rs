//! Writes the seed corpus of the fuzz targets (`gateway_fuzz::seeds`): `record` gets each record
//! as is; `stream` gets each record-marked, some split into several fragments and some run
//! together, behind the first byte that chooses how the stream is cut into reads.
//!
//!     cargo run --example seeds -- DIRECTORY    # writes DIRECTORY/record and DIRECTORY/stream
//!
//! `./run seeds` runs it and minimises the result into `corpus/` with `cargo fuzz cmin`.

use std::path::{Path, PathBuf};

use gateway::record::encode_record;

fn write(directory: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    std::fs::write(directory.join(name), bytes)
}

fn main() -> std::io::Result<()> {
    let output = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("seeds"), PathBuf::from);
    let records = gateway_fuzz::seeds::records();
    for (name, record) in &records {
        write(&output.join("record"), name, record)?;
        // One read per stream, as a client's small call usually arrives.
        let mut stream = vec![0];
        encode_record(record, usize::MAX, &mut stream);
        write(&output.join("stream"), name, &stream)?;
    }
    // Multi-fragment records, read a few bytes at a time.
    for (name, record) in records.iter().step_by(7) {
        let mut stream = vec![5];
        encode_record(record, 24, &mut stream);
        write(
            &output.join("stream"),
            &format!("{name}-fragments"),
            &stream,
        )?;
    }
    // Several records in one read, as a pipelining client sends them.
    let mut pipelined = vec![0];
    for (_, record) in records.iter().take(8) {
        encode_record(record, usize::MAX, &mut pipelined);
    }
    write(&output.join("stream"), "pipelined", &pipelined)?;
    for (name, record) in gateway_fuzz::seeds::serve_records() {
        write(&output.join("serve"), &name, &record)?;
    }
    println!(
        "{} records written under {}",
        records.len(),
        output.display()
    );
    Ok(())
}
