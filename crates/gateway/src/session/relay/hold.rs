//! The wait of a held statement, the session's side: the statement goes to the approvals
//! module (`Approvals::hold`: the review, the wait, the settlement) with what only the session
//! has — a way to tell the client, its socket to keep reading, its CancelRequest, whether it may
//! still run what was approved — and then runs or is refused as the review ends.

use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::FrameReader;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::credential::CredentialWatch;
use super::forward::{Forward, ForwardError};
use super::Event;
use crate::approvals::{ClientEnd, HoldClient, HoldRequest, Interrupts, Settlement};
use crate::net::StreamRead;
use crate::session::guard::Held;
use crate::state::Shared;

/// The session's side of a hold: notices go through the backward half (which alone writes to
/// the client); the client's socket is read meanwhile (what arrives waits behind the statement).
struct Client<'f> {
    events: &'f mpsc::Sender<Event>,
    client: &'f mut StreamRead,
    reader: &'f mut FrameReader,
    credential: &'f mut CredentialWatch,
    tape: Option<&'f Arc<crate::recording::Tape>>,
    shared: &'f Shared,
}

impl HoldClient for Client<'_> {
    async fn notice(&mut self, notice: BytesMut) {
        let _ = self.events.send(Event::Notice(notice)).await;
    }

    async fn gone(&mut self) -> ClientEnd {
        let Client {
            client,
            reader,
            credential,
            shared,
            ..
        } = self;
        let read = async {
            loop {
                // A client that sends without end waits for room, not for memory.
                if reader.buffered() >= (1 << 20) {
                    std::future::pending::<()>().await;
                }
                match client.read_buf(reader.buf_mut()).await {
                    Ok(0) => return std::io::ErrorKind::UnexpectedEof.into(),
                    Ok(_) => {}
                    Err(e) => return e,
                }
            }
        };
        tokio::select! {
            e = read => ClientEnd::Gone(e),
            _ = credential.ended(shared) => ClientEnd::CredentialEnded,
        }
    }

    fn can_run(&mut self) -> bool {
        self.credential.check(self.shared).is_none()
            && self.shared.audit.log.as_ref().is_none_or(|a| a.healthy())
    }

    fn opened(&mut self, review: &str) {
        if let Some(tape) = self.tape {
            tape.held(review);
        }
    }
}

impl Forward<'_> {
    /// Holds the statement until its review ends, then forwards it (approved) or its refusal
    /// (denied, timed out, withdrawn by a cancel); a disconnect ends the session.
    pub(super) async fn hold(&mut self, held: Held) -> Result<(), ForwardError> {
        let shared = self.shared;
        let (kinds, tables) = crate::session::guard::describe(&held.analysis);
        let identity = self.credential.identity.clone();
        let approvals = shared.approvals.config.get();
        let phi_tags = shared.policy.phi_tags.get();
        let request = HoldRequest {
            subject: &identity.subject.0,
            issuer: &identity.issuer,
            role: &identity.role.0,
            session: self.guard.session(),
            sql: &held.sql,
            analysis: &held.analysis,
            rule: &held.refusal.rule,
            hint: &held.refusal.hint,
            settings: self.guard.approval_settings(&held.refusal.rule),
            defaults: &approvals,
            phi_columns: crate::session::guard::phi_columns(&tables, &phi_tags),
            kinds,
            tables,
            session_reason: self.guard.reason(),
        };
        let mut client = Client {
            events: &self.events,
            client: &mut self.client,
            reader: &mut self.reader,
            credential: &mut self.credential,
            tape: self.guard.tape(),
            shared,
        };
        let interrupts = Interrupts {
            cancel: &self.cancelled,
            force_close: &shared.lifecycle.force_close,
        };
        let filtered = match shared
            .approvals
            .reviews
            .hold(request, &mut client, interrupts)
            .await
        {
            Settlement::Run { review } => {
                self.settle_hold(phigate_wire::sqlstate::SUCCESSFUL_COMPLETION);
                self.guard.release(&held, &review)
            }
            Settlement::Refuse { review, refusal } => {
                self.settle_hold(refusal.sqlstate);
                self.guard.reject(&held, &review, refusal)
            }
            Settlement::Gone(e) => {
                self.settle_hold(phigate_wire::sqlstate::QUERY_CANCELED);
                return Err(ForwardError::ClientIo(e));
            }
        };
        self.apply(filtered, &held.frame);
        Ok(())
    }
}
