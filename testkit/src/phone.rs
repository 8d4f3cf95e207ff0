//! A paired device: the real `zoftoken-device` state machine ([`Token`], its state in a
//! [`MemoryStore`]) with the PINs it was paired with, talking to a server over a [`Link`].

use zoftoken_device::{MemoryStore, Pairing, Reply, Request, Token};
use zoftoken_proto::deeplink::Deeplink;
use zoftoken_proto::PinVerifier;

/// The PIN every test phone is paired with.
pub const PIN: &str = "2468";

/// The duress PIN of test phones paired with one.
pub const DURESS_PIN: &str = "1357";

/// How a phone's datagrams reach a server: in process ([`crate::Harness`]) or over UDP
/// ([`crate::UdpLink`]).
pub trait Link {
    /// Why a datagram got no reply (the engine's drop reason, a timeout, …).
    type Error: std::fmt::Debug;

    /// The server's time now (the phone's clock is this plus its skew).
    fn now_ms(&self) -> u64;

    /// Sends one datagram and returns the reply datagram.
    fn exchange(&mut self, datagram: &[u8]) -> Result<Vec<u8>, Self::Error>;
}

/// A paired phone.
#[derive(Debug)]
pub struct Phone {
    /// The device state machine.
    pub token: Token,
    /// Its saved state.
    pub store: MemoryStore,
    /// The PIN's verifier ([`PIN`], or the PIN given at pairing).
    pub pin: PinVerifier,
    /// The duress PIN's verifier ([`DURESS_PIN`]; set on the server only if paired with it).
    pub duress: PinVerifier,
    /// The phone's clock minus the server's, in ms.
    pub clock_skew_ms: i64,
    /// The last request it sent, as sent (to replay it).
    pub last_request: Vec<u8>,
}

impl Phone {
    /// Pairs through `link` from an enrollment's deeplink, with [`PIN`] (and [`DURESS_PIN`] as
    /// the duress PIN if `duress`).
    pub fn pair_deeplink<L: Link>(link: &mut L, deeplink: &str, duress: bool) -> Phone {
        let link_data = Deeplink::parse(deeplink).expect("a valid deeplink");
        Phone::pair(link, Pairing::from_deeplink(&link_data), duress)
    }

    /// Completes `pairing` through `link` with [`PIN`] (and [`DURESS_PIN`] if `duress`).
    pub fn pair<L: Link>(link: &mut L, pairing: Pairing, duress: bool) -> Phone {
        Phone::pair_with_pin(link, pairing, PIN, duress)
    }

    /// Completes `pairing` through `link` with the PIN `pin` (and [`DURESS_PIN`] if `duress`).
    /// Panics if the server does not answer or the pairing fails.
    pub fn pair_with_pin<L: Link>(
        link: &mut L,
        mut pairing: Pairing,
        pin: &str,
        duress: bool,
    ) -> Phone {
        let mut out = [0u8; 1200];
        let now = link.now_ms();
        let tx = pairing
            .init_request(now, [now as u8 ^ 0x5a; 32], &mut out)
            .expect("PAIR_INIT built");
        let mut reply = link
            .exchange(out.get(..tx.len).unwrap_or_default())
            .unwrap_or_else(|e| panic!("PAIR_INIT not answered: {e:?}"));
        let offer = pairing
            .handle_init_reply(&mut reply)
            .expect("PAIR_INIT reply accepted");
        let pin = PinVerifier::derive(pin, &offer.token_id).expect("PIN verifier");
        let duress_pin = PinVerifier::derive(DURESS_PIN, &offer.token_id).expect("PIN verifier");
        let tx = pairing
            .complete_request(&pin, duress.then_some(&duress_pin), link.now_ms(), &mut out)
            .expect("PAIR_COMPLETE built");
        let mut reply = link
            .exchange(out.get(..tx.len).unwrap_or_default())
            .unwrap_or_else(|e| panic!("PAIR_COMPLETE not answered: {e:?}"));
        let mut store = MemoryStore::default();
        let token = pairing
            .handle_complete_reply(&mut store, &mut reply)
            .expect("PAIR_COMPLETE reply accepted")
            .expect("paired");
        Phone {
            token,
            store,
            pin,
            duress: duress_pin,
            clock_skew_ms: 0,
            last_request: Vec::new(),
        }
    }

    /// Builds a request at the server time `server_now_ms` (plus the phone's skew) without
    /// sending it; it counts as sent ([`Phone::last_request`]).
    pub fn request(&mut self, server_now_ms: u64, req: Request<'_>) -> Vec<u8> {
        let mut out = [0u8; 1200];
        let device_now = server_now_ms.saturating_add_signed(self.clock_skew_ms);
        let tx = self
            .token
            .request(&mut self.store, req, device_now, &mut out)
            .expect("request built");
        self.last_request = out.get(..tx.len).unwrap_or_default().to_vec();
        self.last_request.clone()
    }

    /// Builds and sends a request; returns its checked reply (a reply that does not check is
    /// a panic), or why none came.
    pub fn send<L: Link>(&mut self, link: &mut L, req: Request<'_>) -> Result<Reply, L::Error> {
        let datagram = self.request(link.now_ms(), req);
        let mut reply = link.exchange(&datagram)?;
        Ok(self
            .token
            .handle_reply(&mut reply)
            .expect("authentic reply"))
    }

    /// OPEN with the PIN.
    pub fn open<L: Link>(&mut self, link: &mut L) -> Result<Reply, L::Error> {
        let pin = self.pin.clone();
        self.send(link, Request::Open(&pin))
    }

    /// OPEN with the duress PIN.
    pub fn open_duress<L: Link>(&mut self, link: &mut L) -> Result<Reply, L::Error> {
        let pin = self.duress.clone();
        self.send(link, Request::Open(&pin))
    }
}
