//! voxguard-score: scores rows read from stdin with the FraudDetection client, one answer per line on stdout.
//!
//!   voxguard-score [--endpoint HOST:PORT]... [--deadline-ms N] [--ca FILE --server-name NAME
//!                  [--cert FILE --key FILE]] predict|batch|stream < rows
//!
//! A row is `request_id,f1,...,f8` (`nan` for a missing feature). `predict` makes one Predict call per row
//! (retried once on the second endpoint when the first is unavailable or at capacity), `batch` one
//! PredictBatch call, `stream` one PredictStream call. An answer is
//! `request_id<TAB>probability<TAB>is_fraud<TAB>model_version`; a failed call prints
//! `request_id<TAB>error<TAB>CODE<TAB>message` (`-` as request_id for batch and stream), and the exit status is
//! then 1. Bad usage exits 2.

use std::io::{BufRead, Write};
use std::process::exit;
use std::time::Duration;

use voxguard_client::{pb, Client, Status, Tls};

struct Options {
    endpoints: Vec<String>,
    deadline: Duration,
    ca: Option<String>,
    server_name: String,
    cert: Option<String>,
    key: Option<String>,
    mode: String,
}

fn usage(problem: &str) -> ! {
    eprintln!("voxguard-score: {}", problem);
    eprintln!(
        "usage: voxguard-score [--endpoint HOST:PORT]... [--deadline-ms N] [--ca FILE --server-name NAME \
         [--cert FILE --key FILE]] predict|batch|stream < rows"
    );
    exit(2)
}

fn parse_options() -> Options {
    let mut options = Options {
        endpoints: Vec::new(),
        deadline: Duration::from_millis(1000),
        ca: None,
        server_name: "localhost".into(),
        cert: None,
        key: None,
        mode: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| usage(&format!("{} needs a value", name)));
        match arg.as_str() {
            "--endpoint" => options.endpoints.push(value("--endpoint")),
            "--deadline-ms" => {
                let ms: u64 = value("--deadline-ms")
                    .parse()
                    .unwrap_or_else(|_| usage("--deadline-ms: a number"));
                options.deadline = Duration::from_millis(ms);
            }
            "--ca" => options.ca = Some(value("--ca")),
            "--server-name" => options.server_name = value("--server-name"),
            "--cert" => options.cert = Some(value("--cert")),
            "--key" => options.key = Some(value("--key")),
            "predict" | "batch" | "stream" if options.mode.is_empty() => options.mode = arg,
            other => usage(&format!("unexpected argument {:?}", other)),
        }
    }
    if options.mode.is_empty() {
        usage("say predict, batch or stream");
    }
    if options.endpoints.is_empty() {
        options.endpoints.push("127.0.0.1:50051".into());
    }
    options
}

fn read_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| usage(&format!("{}: {}", path, e)))
}

fn tls(options: &Options) -> Option<Tls> {
    let ca = options.ca.as_ref()?;
    Some(Tls {
        ca_pem: read_file(ca),
        server_name: options.server_name.clone(),
        client_cert_pem: options.cert.as_deref().map(read_file),
        client_key_pem: options.key.as_deref().map(read_file),
    })
}

/// The rows of stdin: `request_id,f1,...,fn`.
fn rows() -> Vec<pb::PredictionRequest> {
    let stdin = std::io::stdin();
    let mut rows = Vec::new();
    for (number, line) in stdin.lock().lines().enumerate() {
        let line = line.unwrap_or_else(|e| usage(&format!("stdin: {}", e)));
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.trim().split(',');
        let request_id = fields.next().unwrap_or_default().to_string();
        let features = fields
            .map(|f| f.trim().parse::<f32>())
            .collect::<Result<Vec<f32>, _>>()
            .unwrap_or_else(|e| usage(&format!("line {}: {}", number + 1, e)));
        rows.push(pb::PredictionRequest {
            features,
            request_id,
            ..Default::default()
        });
    }
    rows
}

fn answer(out: &mut impl Write, request_id: &str, probability: f32, is_fraud: bool, model_version: &str) {
    // `{}` prints the shortest decimal that reads back as the same f32.
    writeln!(out, "{}\t{}\t{}\t{}", request_id, probability, is_fraud, model_version).expect("stdout");
}

fn failure(out: &mut impl Write, request_id: &str, status: &Status) {
    writeln!(
        out,
        "{}\terror\t{}\t{}",
        request_id,
        status.code.name(),
        status.message.replace('\n', " ")
    )
    .expect("stdout");
}

async fn run(options: Options) -> bool {
    let client = Client::new(&options.endpoints, tls(&options)).unwrap_or_else(|status| usage(&status.to_string()));
    let rows = rows();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut ok = true;
    match options.mode.as_str() {
        "predict" => {
            for row in &rows {
                match client.predict(row, options.deadline).await {
                    Ok(r) => answer(&mut out, &row.request_id, r.probability, r.is_fraud, &r.model_version),
                    Err(status) => {
                        failure(&mut out, &row.request_id, &status);
                        ok = false;
                    }
                }
            }
        }
        "batch" => match client.predict_batch(rows, options.deadline).await {
            Ok(answers) => {
                for r in answers {
                    answer(&mut out, &r.request_id, r.probability, r.is_fraud, &r.model_version);
                }
            }
            Err(status) => {
                failure(&mut out, "-", &status);
                ok = false;
            }
        },
        _ => {
            let result: Result<(), Status> = async {
                let mut stream = client.predict_stream(options.deadline).await?;
                for row in &rows {
                    stream.send(row)?;
                }
                stream.finish()?;
                while let Some(r) = stream.recv().await? {
                    answer(&mut out, &r.request_id, r.probability, r.is_fraud, &r.model_version);
                }
                Ok(())
            }
            .await;
            if let Err(status) = result {
                failure(&mut out, "-", &status);
                ok = false;
            }
        }
    }
    out.flush().expect("stdout");
    ok
}

fn main() {
    let options = parse_options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(run(options));
    exit(if ok { 0 } else { 1 })
}
