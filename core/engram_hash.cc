#include "core/engram_hash.h"

#include <algorithm>
#include <limits>
#include <set>

namespace dsv4 {
namespace {

bool IsPrime(int64_t v) {
  if (v < 2) return false;
  for (int64_t q = 2; q * q <= v; ++q) {
    if (v % q == 0) return false;
  }
  return true;
}

// NumPy's SeedSequence (bit_generator.pyx): a 4-word pool mixed from the entropy words,
// then generate_state(4, uint64) = 8 hashed words read as 4 little-endian uint64.
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875;
constexpr uint32_t kInitB = 0x8b51f9dd, kMultB = 0x58f38ded;
constexpr uint32_t kMixMultL = 0xca01f9dd, kMixMultR = 0x4973f715;
constexpr int kPoolSize = 4;

uint32_t HashMix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  return value ^ (value >> 16);
}

uint32_t Mix(uint32_t x, uint32_t y) {
  uint32_t r = kMixMultL * x - kMixMultR * y;
  return r ^ (r >> 16);
}

std::vector<uint64_t> SeedSequenceState(uint64_t seed) {
  std::vector<uint32_t> entropy;  // the integer's 32-bit words, least significant first
  do {
    entropy.push_back(static_cast<uint32_t>(seed));
    seed >>= 32;
  } while (seed > 0);
  uint32_t pool[kPoolSize];
  uint32_t hash_const = kInitA;
  for (int i = 0; i < kPoolSize; ++i) {
    pool[i] = HashMix(i < static_cast<int>(entropy.size()) ? entropy[i] : 0, hash_const);
  }
  for (int src = 0; src < kPoolSize; ++src) {
    for (int dst = 0; dst < kPoolSize; ++dst) {
      if (src != dst) pool[dst] = Mix(pool[dst], HashMix(pool[src], hash_const));
    }
  }
  for (size_t src = kPoolSize; src < entropy.size(); ++src) {
    for (int dst = 0; dst < kPoolSize; ++dst) {
      pool[dst] = Mix(pool[dst], HashMix(entropy[src], hash_const));
    }
  }
  uint32_t words[8];
  hash_const = kInitB;
  for (int i = 0; i < 8; ++i) {
    uint32_t v = pool[i % kPoolSize] ^ hash_const;
    hash_const *= kMultB;
    v *= hash_const;
    words[i] = v ^ (v >> 16);
  }
  std::vector<uint64_t> out(4);
  for (int i = 0; i < 4; ++i) out[i] = words[2 * i] | (uint64_t{words[2 * i + 1]} << 32);
  return out;
}

constexpr unsigned __int128 Pcg128(uint64_t high, uint64_t low) {
  return (static_cast<unsigned __int128>(high) << 64) | low;
}
constexpr unsigned __int128 kPcgMultiplier = Pcg128(0x2360ED051FC65DA4ull, 0x4385DF649FCCF645ull);

}  // namespace

std::vector<std::vector<int64_t>> EngramHeadSizes(const EngramConfig& e) {
  std::set<int64_t> used;
  std::vector<std::vector<int64_t>> sizes(e.layer_ids.size());
  for (auto& layer : sizes) {
    for (int order = 2; order <= e.max_ngram_size; ++order) {
      int64_t p = e.vocab_size[order - 2] - 1;
      for (int j = 0; j < e.n_heads; ++j) {
        do {
          ++p;
        } while (!IsPrime(p) || used.count(p));
        used.insert(p);
        layer.push_back(p);
      }
    }
  }
  return sizes;
}

NumpyPcg64::NumpyPcg64(uint64_t seed) {
  const std::vector<uint64_t> s = SeedSequenceState(seed);
  // pcg_setseq_128_srandom_r(initstate = s0:s1, initseq = s2:s3).
  inc_ = (Pcg128(s[2], s[3]) << 1) | 1;
  state_ = 0;
  state_ = state_ * kPcgMultiplier + inc_;
  state_ += Pcg128(s[0], s[1]);
  state_ = state_ * kPcgMultiplier + inc_;
}

uint64_t NumpyPcg64::NextUint64() {
  state_ = state_ * kPcgMultiplier + inc_;
  const uint64_t xored = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(state_ >> 122);
  return (xored >> rot) | (xored << ((64 - rot) & 63));
}

uint32_t NumpyPcg64::NextUint32() {
  if (has_uint32_) {
    has_uint32_ = false;
    return uinteger_;
  }
  const uint64_t next = NextUint64();
  has_uint32_ = true;
  uinteger_ = static_cast<uint32_t>(next >> 32);
  return static_cast<uint32_t>(next);
}

std::vector<int64_t> NumpyIntegers(NumpyPcg64& rng, int64_t low, int64_t high, int count) {
  // NumPy draws from the inclusive range [low, high − 1]: `range` is its width minus one.
  const uint64_t range = static_cast<uint64_t>(high - 1) - static_cast<uint64_t>(low);
  std::vector<int64_t> out(count, low);
  for (int64_t& v : out) {
    uint64_t draw;
    if (range == 0) {
      draw = 0;
    } else if (range == 0xFFFFFFFFull) {
      draw = rng.NextUint32();
    } else if (range < 0xFFFFFFFFull) {
      const uint32_t excl = static_cast<uint32_t>(range) + 1;
      uint64_t m = uint64_t{rng.NextUint32()} * excl;
      if (static_cast<uint32_t>(m) < excl) {
        const uint32_t threshold = (std::numeric_limits<uint32_t>::max() - range) % excl;
        while (static_cast<uint32_t>(m) < threshold) m = uint64_t{rng.NextUint32()} * excl;
      }
      draw = m >> 32;
    } else if (range == std::numeric_limits<uint64_t>::max()) {
      draw = rng.NextUint64();
    } else {
      const uint64_t excl = range + 1;
      unsigned __int128 m = static_cast<unsigned __int128>(rng.NextUint64()) * excl;
      if (static_cast<uint64_t>(m) < excl) {
        const uint64_t threshold = (std::numeric_limits<uint64_t>::max() - range) % excl;
        while (static_cast<uint64_t>(m) < threshold) {
          m = static_cast<unsigned __int128>(rng.NextUint64()) * excl;
        }
      }
      draw = static_cast<uint64_t>(m >> 64);
    }
    v = static_cast<int64_t>(static_cast<uint64_t>(low) + draw);
  }
  return out;
}

std::vector<int64_t> EngramMultipliers(int layer_id, int64_t compressed_vocab, int n) {
  const int64_t half_bound =
      std::max<int64_t>(1, std::numeric_limits<int64_t>::max() / compressed_vocab / 2);
  NumpyPcg64 rng(static_cast<uint64_t>(10007 * int64_t{layer_id}));
  std::vector<int64_t> m = NumpyIntegers(rng, 0, half_bound, n);
  for (int64_t& v : m) v = 2 * v + 1;
  return m;
}

}  // namespace dsv4
