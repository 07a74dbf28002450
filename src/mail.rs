//! Mail the service sends: the link that verifies an e-mail address.
//!
//! Over SMTP (`MARKETFLOW_SMTP_URL`, sent by `lettre`) when configured. `serve --dev` without one prints the mail
//! to standard output instead, never to the log: the link is a credential. Without either, nothing can be sent
//! and addresses stay unverified until an SMTP server is configured (start-up says so once).

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::Secret;
use crate::domain::ids::{Email, Name};

/// How long one SMTP conversation may take before it counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a mail could not be sent. The SMTP URL (it may carry a password) is never part of it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No SMTP server is configured outside `--dev`.
    #[error("no SMTP server is configured (MARKETFLOW_SMTP_URL)")]
    Unavailable,
    #[error("the mail could not be built: {0}")]
    Build(String),
    #[error("the SMTP server did not take the mail: {0}")]
    Smtp(String),
}

/// Where mail goes.
enum Route {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `--dev` without SMTP: standard output.
    Stdout,
    Nowhere,
}

/// Sends the service's mail.
pub struct Mailer {
    /// The transport, chosen once at start-up.
    route: Route,
    /// The sender of every mail (`MARKETFLOW_MAIL_FROM`).
    from: Mailbox,
}

impl Mailer {
    /// Builds the mailer from the configuration; an SMTP URL that does not parse or a sender that is not an
    /// address is refused by name (never by value).
    pub fn new(smtp_url: Option<&Secret>, from: &str, dev: bool) -> Result<Self, crate::config::Error> {
        let from: Mailbox = from.parse().map_err(|e: lettre::address::AddressError| crate::config::Error::Invalid {
            name: "MARKETFLOW_MAIL_FROM",
            message: format!("not a mailbox: {e}"),
        })?;
        let route = match smtp_url {
            Some(url) => {
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose()).map_err(|e| {
                    crate::config::Error::Invalid {
                        name: "MARKETFLOW_SMTP_URL",
                        message: format!("not an SMTP URL (smtp://host:port, smtps://user:password@host): {e}"),
                    }
                })?;
                Route::Smtp(builder.timeout(Some(SMTP_TIMEOUT)).build())
            }
            None if dev => Route::Stdout,
            None => Route::Nowhere,
        };
        Ok(Self { route, from })
    }

    /// Whether mail can go anywhere (else addresses cannot be verified).
    pub fn can_send(&self) -> bool {
        !matches!(self.route, Route::Nowhere)
    }

    /// Sends the verification link to `to`.
    pub async fn send_verification(&self, to: &Email, name: &Name, link: &str) -> Result<(), Error> {
        let body = format!(
            "Hello {name},\n\n\
             please confirm that {to} is your address by opening this link:\n\n{link}\n\n\
             请打开上面的链接以验证您的邮箱地址。\n\n\
             If you did not register with marketflow, ignore this mail: nothing happens without the link.\n"
        );
        match &self.route {
            Route::Nowhere => Err(Error::Unavailable),
            Route::Stdout => {
                // Standard output, not the log: the link verifies the address.
                println!("mail to {to}: verify your address: {link}");
                Ok(())
            }
            Route::Smtp(transport) => {
                let to_box: Mailbox = to.as_str().parse().map_err(|e| Error::Build(format!("{e}")))?;
                let message = Message::builder()
                    .from(self.from.clone())
                    .to(to_box)
                    .subject("Verify your e-mail address / 验证您的邮箱")
                    .header(ContentType::TEXT_PLAIN)
                    .body(body)
                    .map_err(|e| Error::Build(e.to_string()))?;
                transport.send(message).await.map(|_| ()).map_err(|e| Error::Smtp(e.to_string()))
            }
        }
    }
}
