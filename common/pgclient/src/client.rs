//! Opens one connection: TCP or Unix socket, the start-up message with the
//! given parameters (a replayed session's own), and authentication with the given credentials
//! (trust, cleartext, md5, SCRAM-SHA-256 from `postgres-protocol`), up to the first
//! ReadyForQuery. After that the session's captured bytes go over it unchanged.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::{
    authentication::{md5_hash, sasl},
    message::{
        backend::{ErrorResponseBody, Message},
        frontend,
    },
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::conninfo::{Host, Passwords, Target};

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// How long connecting and logging in may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who a session logs in as, and its other start-up parameters.
#[derive(Clone, Debug, Default)]
pub struct Login {
    pub user: String,
    pub database: String,
    /// application_name, client_encoding, DateStyle, options, ...: as the original sent them.
    pub params: Vec<(String, String)>,
}

/// Fails at once, with the reason, when nothing answers at the target (before any session
/// is scheduled: a typo in --target should not cost the length of the input).
pub fn check_reachable(target: &Target) -> anyhow::Result<()> {
    match &target.host {
        Host::Tcp(host) => {
            let addrs: Vec<std::net::SocketAddr> =
                std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), target.port))
                    .with_context(|| format!("cannot resolve {host}"))?
                    .collect();
            let mut last = None;
            for a in &addrs {
                match std::net::TcpStream::connect_timeout(a, Duration::from_secs(5)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.map_or_else(
                || anyhow::anyhow!("{host} has no address"),
                anyhow::Error::from,
            ))
            .with_context(|| format!("cannot connect to {}", target.describe()))
        }
        Host::Unix(_) => {
            let path = target.socket_path().unwrap_or_default();
            std::os::unix::net::UnixStream::connect(&path)
                .map(|_| ())
                .with_context(|| format!("cannot connect to {}", path.display()))
        }
    }
}

/// Connects and logs in; the halves of the connection, ready for queries.
pub async fn connect(
    target: &Target,
    passwords: &Passwords,
    login: &Login,
) -> anyhow::Result<(Reader, Writer)> {
    tokio::time::timeout(LOGIN_TIMEOUT, connect_now(target, passwords, login))
        .await
        .unwrap_or_else(|_| {
            bail!(
                "no answer from {} within {LOGIN_TIMEOUT:?}",
                target.describe()
            )
        })
}

async fn connect_now(
    target: &Target,
    passwords: &Passwords,
    login: &Login,
) -> anyhow::Result<(Reader, Writer)> {
    let (mut r, mut w): (Reader, Writer) = match &target.host {
        Host::Tcp(host) => {
            let s = tokio::net::TcpStream::connect((host.as_str(), target.port))
                .await
                .with_context(|| format!("cannot connect to {}", target.describe()))?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        Host::Unix(_) => {
            let path = target.socket_path().unwrap_or_default();
            let s = tokio::net::UnixStream::connect(&path)
                .await
                .with_context(|| format!("cannot connect to {}", path.display()))?;
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    let mut buf = BytesMut::new();
    let mut params: Vec<(&str, &str)> = vec![
        ("user", login.user.as_str()),
        ("database", login.database.as_str()),
    ];
    params.extend(
        login
            .params
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication"))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    frontend::startup_message(params, &mut buf)?;
    w.write_all(&buf).await?;
    let mut input = BytesMut::with_capacity(4096);
    let password = || {
        passwords
            .lookup(target, &login.database, &login.user)
            .with_context(|| {
                format!(
                    "the server asks a password for user {:?} and none was given \
                     (~/.pgpass, PGPASSWORD, password= in the connection string, or \
                     pg_replay's --password-file)",
                    login.user
                )
            })
    };
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let message = next_message(&mut r, &mut input).await?;
        buf.clear();
        match message {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut buf)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(login.user.as_bytes(), password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut buf)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut offered = vec![];
                while let Some(m) = mechanisms.next()? {
                    offered.push(m.to_string());
                }
                if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    bail!("the server offers SASL {offered:?}; pgbpf speaks SCRAM-SHA-256");
                }
                let s = sasl::ScramSha256::new(
                    password()?.as_bytes(),
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut buf)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().context("SASL continue before SASL start")?;
                s.update(body.data())
                    .context("the server's SCRAM message")?;
                frontend::sasl_response(s.message(), &mut buf)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram.as_mut().context("SASL final before SASL start")?;
                s.finish(body.data())
                    .context("the server's SCRAM signature does not verify")?;
            }
            Message::ErrorResponse(body) => {
                let (code, text) = error_fields(&body)?;
                bail!(
                    "{} refused the login of {:?} to {:?}: {text} (SQLSTATE {code})",
                    target.describe(),
                    login.user,
                    login.database
                );
            }
            Message::ReadyForQuery(_) => return Ok((r, w)),
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationSspi
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGssContinue(_) => {
                bail!(
                    "the server asks for GSS/SSPI/Kerberos authentication, which pgbpf does not speak"
                )
            }
            // ParameterStatus, BackendKeyData, notices, NegotiateProtocolVersion.
            _ => {}
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
        }
    }
}

/// The next backend message, reading as needed.
async fn next_message(r: &mut Reader, input: &mut BytesMut) -> anyhow::Result<Message> {
    loop {
        if let Some(m) = Message::parse(input).context("a malformed message from the server")? {
            return Ok(m);
        }
        if r.read_buf(input).await? == 0 {
            bail!("the server closed the connection while logging in");
        }
    }
}

/// An ErrorResponse's SQLSTATE and message.
pub fn error_fields(body: &ErrorResponseBody) -> anyhow::Result<(String, String)> {
    let (mut code, mut text) = (String::new(), String::new());
    let mut fields = body.fields();
    while let Some(f) = fields.next()? {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => text = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    Ok((code, text))
}
