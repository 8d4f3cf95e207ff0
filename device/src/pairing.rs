//! [`Pairing`]: an enrollment completed from a deeplink or a manual code (PAIR_INIT, then
//! PAIR_COMPLETE with the sealed PIN verifiers), yielding a [`Token`](crate::Token).

use zerocopy::IntoBytes;
use zoftoken_proto::codes;
use zoftoken_proto::deeplink::{check_endpoint, Deeplink};
use zoftoken_proto::packet::{open_reply, seal_request};
use zoftoken_proto::pairing::Ephemeral;
use zoftoken_proto::wire::{
    check_reply, Be64, Header, PairCompleteRequest, PairInitRequest, PinIndex, ReplyBody,
    SERVICE_FLAG_DURESS,
};
use zoftoken_proto::{
    DropReason, EnrollmentKeys, MsgType, PinKeyRing, PinVerifier, ReplyStatus, TokenId, TokenSecret,
};

use crate::token::{take_pin_key, verifier_block, ServiceInfo, TokenStatus, Transmit};
use crate::{DeviceError, StateStore, Token};

/// What the server offered in its PAIR_INIT reply: the app now asks the user for a PIN (and a
/// duress PIN if the service allows one) and derives the verifiers for `token_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairOffer {
    /// The token id to derive PIN verifiers for.
    pub token_id: TokenId,
    /// The service's parameters.
    pub service: ServiceInfo,
}

struct Offer {
    token_id: TokenId,
    secret: TokenSecret,
    /// The PIN keys of the pairing (the PIN root itself is forgotten once expanded).
    pin_keys: PinKeyRing,
    service: ServiceInfo,
    next_counter: u64,
    outstanding: Vec<u64>,
    verifiers: Option<(PinVerifier, Option<PinVerifier>)>,
    /// PAIR_COMPLETE was answered and the token saved: the pairing is over.
    paired: bool,
}

/// An enrollment being completed (SPEC.md §5): PAIR_INIT, then PAIR_COMPLETE.
pub struct Pairing {
    keys: EnrollmentKeys,
    service: String,
    endpoints: Vec<String>,
    details_url: Option<String>,
    last_init_counter: u64,
    attempts: Vec<(u64, Ephemeral)>,
    offer: Option<Offer>,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing")
            .field("service", &self.service)
            .field("endpoints", &self.endpoints)
            .field("offered", &self.offer.is_some())
            .finish_non_exhaustive()
    }
}

impl Pairing {
    /// Starts from a parsed deeplink.
    pub fn from_deeplink(link: &Deeplink) -> Pairing {
        Pairing {
            keys: link.secret.keys(),
            service: link.service.clone(),
            endpoints: link.endpoints.clone(),
            details_url: link.details_url.clone(),
            last_init_counter: 0,
            attempts: Vec::new(),
            offer: None,
        }
    }

    /// Starts from a manual enrollment code typed by the user; the app supplies the service
    /// name and endpoints it was built for.
    pub fn from_manual_code(
        code: &str,
        service: &str,
        endpoints: Vec<String>,
        details_url: Option<String>,
    ) -> Result<Pairing, DeviceError> {
        let secret = codes::parse_manual_code(code)?;
        if endpoints.is_empty() {
            return Err(zoftoken_proto::Error::Deeplink("at least one endpoint").into());
        }
        endpoints.iter().try_for_each(|e| check_endpoint(e))?;
        Ok(Pairing {
            keys: secret.keys(),
            service: service.to_owned(),
            endpoints,
            details_url,
            last_init_counter: 0,
            attempts: Vec::new(),
            offer: None,
        })
    }

    /// The endpoints to send to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Builds a PAIR_INIT. Every attempt (including retries) needs 32 fresh random bytes for
    /// its ephemeral key. The counter is the device time in milliseconds, forced above the
    /// previous attempt's, so that it keeps increasing even if the app restarts (SPEC.md §5.2).
    pub fn init_request(
        &mut self,
        now_ms: u64,
        ephemeral_random: [u8; 32],
        out: &mut [u8],
    ) -> Result<Transmit, DeviceError> {
        if self.offer.is_some() {
            return Err(DeviceError::OutOfOrder("PAIR_INIT already answered"));
        }
        let counter = now_ms.max(self.last_init_counter.saturating_add(1));
        let ephemeral = Ephemeral::from_random(ephemeral_random);
        let body = PairInitRequest {
            device_time_ms: Be64::new(now_ms),
            device_public: ephemeral.public(),
            zero: [0; 72],
        };
        let len = seal_request(
            &self.keys.d2s,
            MsgType::PairInit,
            self.keys.pairing_id,
            counter,
            body.as_bytes(),
            out,
        )?;
        self.last_init_counter = counter;
        if self.attempts.len() == 4 {
            self.attempts.remove(0);
        }
        self.attempts.push((counter, ephemeral));
        Ok(Transmit {
            len,
            counter,
            msg_type: MsgType::PairInit,
        })
    }

    /// Handles the PAIR_INIT reply: verifies it, completes the X25519 exchange, opens the
    /// token's PIN root and expands it into the PIN key ring (the root is not kept), and
    /// returns the offer. Later replies to other attempts are dropped.
    pub fn handle_init_reply(&mut self, datagram: &mut [u8]) -> Result<PairOffer, DeviceError> {
        if self.offer.is_some() {
            return Err(DropReason::UnexpectedReply.into());
        }
        let (msg_type, header) = check_reply(datagram)?;
        let counter = header.counter.get();
        if msg_type != MsgType::PairInit || header.token_id != self.keys.pairing_id {
            return Err(DropReason::UnexpectedReply.into());
        }
        let slot = self
            .attempts
            .iter()
            .position(|(c, _)| *c == counter)
            .ok_or(DropReason::UnexpectedReply)?;
        let opened = open_reply(&self.keys.s2d, datagram)?;
        let ReplyBody::PairInit(reply) = opened.body else {
            return Err(DropReason::UnexpectedReply.into());
        };
        let status = TokenStatus::from_block(&reply.status)?;
        if status.status != ReplyStatus::Ok || reply.service_flags & !SERVICE_FLAG_DURESS != 0 {
            return Err(DropReason::InvalidField.into());
        }
        let service = ServiceInfo {
            name: self.service.clone(),
            endpoints: self.endpoints.clone(),
            details_url: self.details_url.clone(),
            otp_length: reply.otp_length,
            otp_period_s: reply.otp_period_s.get(),
            otp_alphabet: reply.otp_alphabet,
            window_s: reply.window_s.get(),
            duress_allowed: reply.service_flags & SERVICE_FLAG_DURESS != 0,
        };
        service.otp_params().map_err(|_| DropReason::InvalidField)?;
        let (_, ephemeral) = self.attempts.swap_remove(slot);
        let agreement = ephemeral.device_agree(&reply.server_public, &self.keys.pairing_id)?;
        let pin_keys = PinKeyRing::new(agreement.open_pin_root(&reply.pin_root_sealed));
        let secret = agreement.secret.clone();
        drop(agreement);
        let token_id = TokenId(reply.token_id);
        self.attempts.clear();
        self.offer = Some(Offer {
            token_id,
            secret,
            pin_keys,
            service: service.clone(),
            next_counter: 1,
            outstanding: Vec::new(),
            verifiers: None,
            paired: false,
        });
        Ok(PairOffer { token_id, service })
    }

    /// Builds a PAIR_COMPLETE carrying the PIN verifier (and the duress verifier where the
    /// service allows duress), sealed under the pairing's next PIN key. Retries must call this
    /// again: a new counter and a new PIN key, the same verifiers. (Until the reply, the
    /// pairing lives in memory only; the token saved on success holds the ring without the
    /// keys taken here.)
    pub fn complete_request(
        &mut self,
        pin: &PinVerifier,
        duress: Option<&PinVerifier>,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Transmit, DeviceError> {
        let offer = self
            .offer
            .as_mut()
            .ok_or(DeviceError::OutOfOrder("PAIR_INIT not answered yet"))?;
        if offer.paired {
            return Err(DeviceError::OutOfOrder("already paired: use the token"));
        }
        if duress.is_some() && !offer.service.duress_allowed {
            return Err(DeviceError::OutOfOrder(
                "the service does not allow a duress PIN",
            ));
        }
        if let Some((p, d)) = &offer.verifiers {
            if p != pin || d.as_ref() != duress {
                return Err(DeviceError::OutOfOrder("a retry must send the same PIN"));
            }
        }
        let counter = offer.next_counter;
        let (index, key) = take_pin_key(&mut offer.pin_keys)?;
        let header = Header::request(MsgType::PairComplete, offer.token_id.0, counter);
        let block = verifier_block(pin, duress);
        let body = PairCompleteRequest {
            device_time_ms: Be64::new(now_ms),
            pin: PinIndex::new(index),
            verifiers: key.seal_verifiers(&header, &block)?,
        };
        drop((key, block));
        let keys = offer.secret.keys();
        let len = seal_request(
            &keys.d2s,
            MsgType::PairComplete,
            offer.token_id.0,
            counter,
            body.as_bytes(),
            out,
        )?;
        offer.next_counter = offer.next_counter.saturating_add(1);
        offer.outstanding.push(counter);
        offer.verifiers = Some((pin.clone(), duress.cloned()));
        Ok(Transmit {
            len,
            counter,
            msg_type: MsgType::PairComplete,
        })
    }

    /// Handles the PAIR_COMPLETE reply. On success the paired token is saved to `store` and
    /// returned; a refusal is returned as its status.
    pub fn handle_complete_reply(
        &mut self,
        store: &mut dyn StateStore,
        datagram: &mut [u8],
    ) -> Result<Result<Token, TokenStatus>, DeviceError> {
        let offer = self.offer.as_mut().ok_or(DropReason::UnexpectedReply)?;
        let (msg_type, header) = check_reply(datagram)?;
        if msg_type != MsgType::PairComplete
            || header.token_id != offer.token_id.0
            || !offer.outstanding.contains(&header.counter.get())
        {
            return Err(DropReason::UnexpectedReply.into());
        }
        let opened = open_reply(&offer.secret.keys().s2d, datagram)?;
        let status = TokenStatus::from_block(opened.body.status())?;
        if status.status != ReplyStatus::Ok {
            return Ok(Err(status));
        }
        let token = Token::new(
            offer.token_id,
            offer.secret.clone(),
            offer.next_counter,
            offer.service.clone(),
            offer.pin_keys.clone(),
        );
        store.save(&token.to_bytes()?)?;
        // Paired: a late reply to another attempt must not save this state again over the
        // token's newer one (its counter and PIN keys would be used twice).
        offer.outstanding.clear();
        offer.paired = true;
        Ok(Ok(token))
    }
}
