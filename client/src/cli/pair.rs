//! `pair`: from a deeplink or a manual code, PAIR_INIT then PAIR_COMPLETE with the new PIN
//! (asked twice) and an optional duress PIN; the token is saved in the state file.

use serde_json::json;
use zeroize::Zeroizing;
use zoftoken_device::{DeviceError, PairOffer, Pairing, Token, TokenStatus};
use zoftoken_proto::deeplink::{Deeplink, DEEPLINK_PREFIX};
use zoftoken_proto::PinVerifier;

use super::args::DeviceOptions;
use super::output::{printable, state_name, Report};
use super::paired::{ascii_pin, check, now_ms};
use crate::pin::PinSource;
use crate::state::FileStore;
use crate::transport::{Exchange, Transport};
use crate::ClientError;

/// Reads a new PIN twice; they must match.
fn new_pin(pins: &mut dyn PinSource, what: &str) -> Result<Zeroizing<String>, ClientError> {
    let first = pins.read_pin(&format!("New {what}: "))?;
    let second = pins.read_pin(&format!("Repeat the new {what}: "))?;
    if first != second {
        return Err(ClientError::BadInput(format!("the two {what}s differ")));
    }
    ascii_pin(&first)?;
    Ok(first)
}

struct InitExchange<'a> {
    pairing: &'a mut Pairing,
}

impl Exchange for InitExchange<'_> {
    type Output = PairOffer;

    fn build(&mut self, out: &mut [u8]) -> Result<usize, ClientError> {
        let mut random = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut *random);
        Ok(self.pairing.init_request(now_ms(), *random, out)?.len)
    }

    fn accept(&mut self, datagram: &mut [u8]) -> Result<Option<PairOffer>, ClientError> {
        match self.pairing.handle_init_reply(datagram) {
            Ok(offer) => Ok(Some(offer)),
            Err(DeviceError::Dropped(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

struct CompleteExchange<'a> {
    pairing: &'a mut Pairing,
    store: &'a mut FileStore,
    pin: &'a PinVerifier,
    duress: Option<&'a PinVerifier>,
}

impl Exchange for CompleteExchange<'_> {
    type Output = Result<Token, TokenStatus>;

    fn build(&mut self, out: &mut [u8]) -> Result<usize, ClientError> {
        Ok(self
            .pairing
            .complete_request(self.pin, self.duress, now_ms(), out)?
            .len)
    }

    fn accept(&mut self, datagram: &mut [u8]) -> Result<Option<Self::Output>, ClientError> {
        match self.pairing.handle_complete_reply(self.store, datagram) {
            Ok(r) => Ok(Some(r)),
            Err(DeviceError::Dropped(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// `pair`: pairs the token of a deeplink or manual code and saves it in the state file
/// (refused over a paired token without `force`).
pub(super) fn pair(
    opts: &DeviceOptions,
    pins: &mut dyn PinSource,
    code: &str,
    service: Option<&str>,
    endpoints: &[String],
    duress: bool,
    force: bool,
) -> Result<Report, ClientError> {
    let mut store = FileStore::new(&opts.state);
    let _lock = store.lock()?;
    if store.exists() && !force {
        return Err(ClientError::AlreadyPaired(opts.state.clone()));
    }
    let code = code.trim();
    let mut pairing = if code.starts_with(DEEPLINK_PREFIX) {
        if service.is_some() || !endpoints.is_empty() {
            return Err(ClientError::BadInput(
                "--service and --endpoint are for manual codes; a deeplink carries them".into(),
            ));
        }
        Pairing::from_deeplink(&Deeplink::parse(code)?)
    } else {
        let service = service.ok_or_else(|| {
            ClientError::BadInput("a manual code needs --service (the service name)".into())
        })?;
        if endpoints.is_empty() {
            return Err(ClientError::BadInput(
                "a manual code needs at least one --endpoint HOST:PORT".into(),
            ));
        }
        Pairing::from_manual_code(code, service, endpoints.to_vec(), None)?
    };
    let transport = Transport::new(pairing.endpoints().to_vec(), opts.transport.clone())?;
    let offer = transport.run(&mut InitExchange {
        pairing: &mut pairing,
    })?;
    if duress && !offer.service.duress_allowed {
        return Err(ClientError::BadInput(format!(
            "service {} does not allow a duress PIN",
            printable(&offer.service.name)
        )));
    }
    let pin = new_pin(pins, "PIN")?;
    let duress_pin = if duress {
        let d = new_pin(pins, "duress PIN")?;
        if d == pin {
            return Err(ClientError::BadInput(
                "the duress PIN must differ from the PIN".into(),
            ));
        }
        Some(d)
    } else {
        None
    };
    let pin_v = PinVerifier::derive(&pin, &offer.token_id)?;
    let duress_v = duress_pin
        .as_ref()
        .map(|d| PinVerifier::derive(d, &offer.token_id))
        .transpose()?;
    drop((pin, duress_pin));
    let result = transport.run(&mut CompleteExchange {
        pairing: &mut pairing,
        store: &mut store,
        pin: &pin_v,
        duress: duress_v.as_ref(),
    })?;
    let token = match result {
        Ok(token) => token,
        Err(status) => {
            check(&status)?;
            return Err(ClientError::Refused(format!(
                "pairing not completed (token {})",
                state_name(status.state)
            )));
        }
    };
    let svc = token.service();
    Ok(Report {
        human: format!(
            "paired with {} (token {}); state saved in {}",
            printable(&svc.name),
            token.token_id(),
            opts.state.display()
        ),
        json: json!({
            "ok": true,
            "command": "pair",
            "token_id": token.token_id().to_hex(),
            "service": svc.name,
            "endpoints": svc.endpoints,
            "duress_pin": duress_v.is_some(),
            "window_s": svc.window_s,
            "otp_length": svc.otp_length,
            "otp_period_s": svc.otp_period_s,
            "state_file": opts.state.display().to_string(),
        }),
    })
}
