//! How an API authentication (one-time code, offline response, backup code) ends: the token
//! settles as after any authentication (`crate::auth`), and the answer says accepted,
//! rejected with the attempts left, or blocked.

use crate::auth::{record_duress, Auth};
use crate::event::{Actor, DuressOp};
use crate::mutation::Batch;
use crate::state::{TokenEntry, TokenState};
use crate::Engine;

/// The result of an offline response or a code validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineOutcome {
    /// Correct; the token opened (for offline responses) or the code is valid.
    Accepted {
        /// Made with the duress PIN (reported only where the service allows duress).
        duress: bool,
    },
    /// Wrong; one failure counted.
    Rejected {
        /// Failures left before blocking.
        attempts_left: u8,
    },
    /// The token is blocked; nothing was checked.
    Blocked,
}

impl Engine {
    /// Applies `auth` to the token as any authentication (opening it if `open` and correct)
    /// and records a one-time code's duress use; the answer for the API.
    pub(super) fn outcome(
        &self,
        now_ms: u64,
        e: &mut TokenEntry,
        auth: Auth,
        duress_ok: bool,
        open: bool,
        batch: &mut Batch,
    ) -> OfflineOutcome {
        let out = match &auth {
            Auth::Ok { duress } => OfflineOutcome::Accepted {
                duress: *duress && duress_ok,
            },
            Auth::Blocked => OfflineOutcome::Blocked,
            Auth::Failed => OfflineOutcome::Rejected { attempts_left: 0 },
        };
        let duress = matches!(auth, Auth::Ok { duress: true });
        // The reply status is for the app; the API answers with the outcome below.
        self.apply_auth(
            now_ms,
            e,
            auth,
            duress_ok,
            Actor::Operator,
            batch,
            open,
            &self.services(),
        );
        // Opening records its own duress use (offline response); the one other duress
        // authentication here is an app one-time code (backup and TOTP codes have no duress).
        if duress && duress_ok && !open {
            record_duress(
                e,
                now_ms,
                DuressOp::OneTimeCode,
                Actor::Operator,
                None,
                batch,
            );
        }
        match out {
            OfflineOutcome::Rejected { .. } if e.state == TokenState::Blocked => {
                OfflineOutcome::Blocked
            }
            OfflineOutcome::Rejected { .. } => OfflineOutcome::Rejected {
                attempts_left: e.attempts_left(),
            },
            other => other,
        }
    }
}
