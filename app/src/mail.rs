//! Outgoing email: one port, two real deliveries (SMTP, or .eml files in a
//! directory when no SMTP server is configured).

use std::path::PathBuf;

use lettre::message::{Mailbox, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the message could not be built: {0}")]
    Build(String),
    #[error("the message could not be delivered: {0}")]
    Delivery(String),
}

/// What the service sends: plain text, to one person.
#[derive(Clone, Debug)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    Directory {
        dir: PathBuf,
        from: Mailbox,
    },
}

impl Mailer {
    /// `smtp://host:port` (STARTTLS when the server offers it, or as the URL
    /// says: `?tls=required`), `smtps://` for TLS from the start.
    pub fn smtp(url: &str, from: &str) -> anyhow::Result<Self> {
        Ok(Mailer::Smtp {
            transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.build(),
            from: from.parse()?,
        })
    }

    pub fn directory(dir: PathBuf, from: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Mailer::Directory {
            dir,
            from: from.parse()?,
        })
    }

    fn from(&self) -> &Mailbox {
        match self {
            Mailer::Smtp { from, .. } | Mailer::Directory { from, .. } => from,
        }
    }

    pub async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let sent = self.deliver(mail).await;
        crate::metrics::email(sent.is_ok());
        sent
    }

    async fn deliver(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|error| MailError::Build(format!("{error}")))?;
        // lettre adds `Date` itself; `MIME-Version` comes with the single
        // part. The Message-ID names the sender's domain rather than this
        // machine's host name (lettre's default), which is internal.
        let from = self.from().clone();
        let message_id = format!("<{}@{}>", Uuid::new_v4().simple(), from.email.domain());
        let message = Message::builder()
            .from(from)
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(message_id))
            .date_now()
            .singlepart(SinglePart::plain(mail.body.clone()))
            .map_err(|error| MailError::Build(error.to_string()))?;
        match self {
            Mailer::Smtp { transport, .. } => transport
                .send(message)
                .await
                .map(drop)
                .map_err(|error| MailError::Delivery(error.to_string())),
            Mailer::Directory { dir, .. } => {
                // Written under a temporary name and renamed, so a reader
                // never sees half a message.
                let name = Uuid::new_v4();
                let partial = dir.join(format!(".{name}.tmp"));
                let complete = dir.join(format!("{name}.eml"));
                let bytes = message.formatted();
                async {
                    tokio::fs::write(&partial, bytes).await?;
                    tokio::fs::rename(&partial, &complete).await
                }
                .await
                .map_err(|error| MailError::Delivery(error.to_string()))
            }
        }
    }
}
