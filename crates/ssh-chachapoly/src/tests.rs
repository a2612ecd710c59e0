use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ctx(key: &[u8], iv: &[u8; 8], counter: Option<u64>) -> ChachaCtx {
    let mut x = ChachaCtx { input: [0; 16] };
    let c = counter.map(u64::to_le_bytes);
    let cp = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: key of kbits/8 bytes, 8-byte iv and counter, a local context
    unsafe {
        chacha_keysetup(&mut x, key.as_ptr(), key.len() as u32 * 8);
        chacha_ivsetup(&mut x, iv.as_ptr(), cp);
    }
    x
}

fn encrypt(x: &mut ChachaCtx, m: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; m.len()];
    // SAFETY: input and output of m.len() bytes
    unsafe { chacha_encrypt_bytes(x, m.as_ptr(), out.as_mut_ptr(), m.len()) };
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn chacha20_matches_rfc7539_sunscreen_vector() {
    // RFC 7539 2.4.2: counter 1, nonce 00..00 4a 00 00 00 00 (the DJB
    // layout's 64-bit counter and nonce hold the same words)
    let key: Vec<u8> = (0..32).collect();
    let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let mut x = ctx(&key, &[0, 0, 0, 0x4a, 0, 0, 0, 0], Some(1));
    let want = hex(
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b357\
         1639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736\
         5af90bbf74a35be6b40b8eedf2785e42874d",
    );
    assert_eq!(encrypt(&mut x, plain), want);
    // the counter moved past the two blocks used (114 bytes)
    assert_eq!(x.input[12..14], [3, 0]);
}

#[test]
fn poly1305_matches_rfc7539_vector() {
    let key = hex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b");
    let msg = b"Cryptographic Forum Research Group";
    let mut tag = [0u8; 16];
    // SAFETY: 16-byte output, 32-byte key, msg.len() bytes of message
    unsafe { poly1305_auth(tag.as_mut_ptr(), msg.as_ptr(), msg.len(), key.as_ptr()) };
    assert_eq!(tag.to_vec(), hex("a8061dc1305136c6c22b8baf0c0127a9"));
}

#[test]
fn vectorised_keystream_equals_the_reference_at_any_length_and_counter() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // (the last one wraps past 2^64 beyond 128 bytes: the scalar path)
    let counters = [
        0u64,
        1,
        7,
        u32::MAX as u64 - 1,
        u32::MAX as u64,
        1 << 40,
        u64::MAX - 2,
    ];
    for len in [
        0usize, 1, 4, 63, 64, 65, 127, 128, 255, 256, 257, 511, 1000, 35_000,
    ] {
        for &counter in &counters {
            let key = rng.bytes(32);
            let iv: [u8; 8] = rng.bytes(8).try_into().unwrap();
            let msg = rng.bytes(len);
            let mut x = ctx(&key, &iv, Some(counter));
            let mut want = msg.clone();
            reference_xor(&x.input, &mut want);
            assert_eq!(encrypt(&mut x, &msg), want, "len {len} counter {counter}");
            let next = u64::from(x.input[13]) << 32 | u64::from(x.input[12]);
            assert_eq!(
                next,
                counter.wrapping_add(len.div_ceil(64) as u64),
                "counter after {len} bytes"
            );
        }
    }
}

#[test]
fn in_place_and_overlapping_buffers_give_the_same_ciphertext() {
    let mut rng = Rng(42);
    let key = rng.bytes(32);
    let iv = [9u8; 8];
    let msg = rng.bytes(1000);
    let want = encrypt(&mut ctx(&key, &iv, None), &msg);
    let mut buf = msg.clone();
    let mut x = ctx(&key, &iv, None);
    // SAFETY: the same 1000-byte buffer as input and output
    unsafe { chacha_encrypt_bytes(&mut x, buf.as_ptr(), buf.as_mut_ptr(), buf.len()) };
    assert_eq!(buf, want);
    // output one byte ahead of the input: the input is read whole first
    let mut buf = msg.clone();
    buf.push(0);
    let mut x = ctx(&key, &iv, None);
    // SAFETY: input bytes 0..1000, output bytes 1..1001 of one buffer
    unsafe { chacha_encrypt_bytes(&mut x, buf.as_ptr(), buf.as_mut_ptr().add(1), 1000) };
    assert_eq!(buf[1..], want[..]);
}

#[test]
fn a_128_bit_key_uses_the_16_byte_constants_and_the_key_twice() {
    let key: Vec<u8> = (1..=16).collect();
    let x = ctx(&key, &[0; 8], None);
    assert_eq!(words_le::<16>(&x.input[0..4]), *TAU);
    assert_eq!(x.input[4..8], x.input[8..12]);
    let mut long = key.clone();
    long.extend_from_slice(&key);
    let same_words_256 = ctx(&long, &[0; 8], None);
    // the same key words under other constants: another keystream
    assert_ne!(
        encrypt(&mut { x }, &[0; 64]),
        encrypt(&mut { same_words_256 }, &[0; 64])
    );
}
