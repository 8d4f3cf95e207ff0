//! The PIN material of a request, under the request's PIN key (SPEC.md §6.3): the key comes
//! from the token's PIN root, recomputed from the instance's PIN-tree secret and `K`
//! (`crate::pin_root`); proofs are checked and sealed verifier blocks opened with it.

use zoftoken_proto::pin::{check_proof, PinMatch};
use zoftoken_proto::pin_keys::SEALED_VERIFIERS_LEN;
use zoftoken_proto::wire::{Header, MsgType, VerifierBlock};
use zoftoken_proto::{DropReason, PinVerifier};

use crate::state::TokenEntry;
use crate::Engine;

impl Engine {
    /// Checks a PIN proof under the request's PIN key (SPEC.md §6.3): the token's PIN root
    /// from the instance secret and `K`, then the key of `index` (validated when the body was
    /// parsed; an index out of range could only read as a wrong proof).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_proof(
        &self,
        e: &TokenEntry,
        index: u32,
        proof: &[u8; 16],
        normal: &PinVerifier,
        duress: Option<&PinVerifier>,
        t: MsgType,
        counter: u64,
    ) -> PinMatch {
        match crate::pin_root(&self.pin_tree_secret, &e.secret).key(index) {
            Ok(key) => check_proof(proof, &key, normal, duress, t, &e.id, counter),
            Err(_) => PinMatch::Wrong,
        }
    }

    /// Opens and parses a sealed verifier block of PAIR_COMPLETE or CHANGE_PIN.
    pub(super) fn open_verifiers(
        &self,
        token_secret: &[u8; 32],
        index: u32,
        header: &Header,
        sealed: &[u8; SEALED_VERIFIERS_LEN],
    ) -> Result<VerifierBlock, DropReason> {
        let key = crate::pin_root(&self.pin_tree_secret, token_secret).key(index)?;
        let mut plain = key.open_verifiers(header, sealed)?;
        let block = VerifierBlock::parse(&plain);
        zeroize::Zeroize::zeroize(&mut plain);
        block
    }
}
