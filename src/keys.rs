//! `tslm keygen` and `tslm hash-token`: publisher credentials.

use std::process::ExitCode;

/// `tslm keygen --out FILE`: a new Ed25519 key pair for a publisher. The secret goes to FILE
/// (created, never overwritten, readable by its owner only); the public key is printed as the
/// line for the gateway's config.
pub(crate) fn keygen(out: &std::path::Path) -> ExitCode {
    let key = tslm_auth::keys::SecretKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(out).and_then(|mut f| {
        use std::io::Write;
        writeln!(f, "{}", key.to_text())
    });
    if let Err(e) = written {
        eprintln!("error: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "secret key written to {} (keep it on the publisher only)",
        out.display()
    );
    eprintln!("add the public key to the publisher's entry in the gateway config:");
    println!("keys = [\"{}\"]", key.public_text());
    ExitCode::SUCCESS
}

/// `tslm hash-token`: a new random token (or the token read from stdin with --stdin) and the
/// line for the gateway's config, which holds only its hash.
pub(crate) fn hash_token(stdin: bool) -> ExitCode {
    let token = if stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("error: reading stdin: {e}");
            return ExitCode::FAILURE;
        }
        let t = line.trim().to_owned();
        if t.is_empty() {
            eprintln!("error: no token on stdin");
            return ExitCode::FAILURE;
        }
        t
    } else {
        let t = tslm_auth::token::generate_token();
        eprintln!("token (give it to the publisher; it is shown once and stored nowhere):");
        println!("{t}");
        t
    };
    eprintln!("add the hash to the publisher's entry in the gateway config:");
    println!(
        "token_hashes = [\"{}\"]",
        tslm_auth::token::hash_line(&token)
    );
    ExitCode::SUCCESS
}
