// Engram memory-node lookups on loopback against Redis holding the same rows, and a V4.1
// model's step time with its Engram tables local vs on a memory node.
//
//   bench_engram [--out bench/results/engram.json] [--no_end_to_end] [--quick]
//
// Lookups: records as DeepSeek-V4.1-Flash releases them (d_e = 256 F8_E4M3 values + 8 E8M0
// scales = 264 B a row). It generates a v41-tiny-shaped checkpoint whose two Engram tables
// have d_e = 256 and ~262k rows each, starts dsv4-engram-store (next to this binary) and
// redis-server (Debian's, on a free loopback port, no persistence) loaded with the same
// records as one key per row, and times batches shaped like V4.1-Flash's lookups (one
// Engram layer: 3 n-gram orders × 8 heads = 24 rows per token; 1 to 256 tokens, plus a
// single row) with one request in flight: Engram unary Lookup vs Redis MGET vs pipelined
// GETs (RESP over a plain socket). Reports rows/s, GB/s of record data and p50/p99 request
// latency; both servers are stopped at the end.
//
// End to end: v41-mini (FP8 tables, 66-B records) with its tables in this process vs on a
// memory node, same checkpoint, prefill and decode step times.
//
// --quick: ~16k-row tables, batches up to 16 tokens, a short end-to-end run on v41-tiny
// (seconds; for checking the harness, not for numbers); writes to
// $TMPDIR/dsv4-bench-engram-quick.json unless --out is given.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention_node/model.h"
#include "bench/bench_util.h"
#include "core/checkpoint_generator.h"
#include "core/checkpoint_layout.h"
#include "core/engram_hash.h"
#include "core/engram_rows.h"
#include "core/safetensors.h"
#include "engram_store/client.h"
#include "engram_store/server.h"
#include "expert_node/in_process_executor.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "proto/engram.grpc.pb.h"

namespace dsv4 {
namespace {

using json = nlohmann::json;
using bench::Clock;

using bench::SourceRoot;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "bench_engram: %s\n", what.c_str());
  std::exit(1);
}

// A child process whose stdout we read (to learn the port it bound).
struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;

  static Child Spawn(const std::vector<std::string>& argv) {
    int fds[2];
    if (pipe(fds) != 0) Die("pipe failed");
    Child c;
    c.pid = fork();
    if (c.pid == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    c.out = fdopen(fds[0], "r");
    return c;
  }
  // The first stdout line containing `marker`.
  std::string WaitFor(const std::string& marker) {
    char line[4096];
    while (std::fgets(line, sizeof(line), out)) {
      if (std::strstr(line, marker.c_str())) return line;
    }
    Die("child exited before printing \"" + marker + "\"");
  }
  void Stop() {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
    fclose(out);
    pid = -1;
  }
};

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// A minimal RESP2 connection: commands out, bulk strings and arrays of them back.
class Resp {
 public:
  bool Connect(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd_);
      return false;
    }
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return true;
  }
  ~Resp() {
    if (fd_ >= 0) close(fd_);
  }

  static void AppendCommand(std::string* out, const std::vector<std::string_view>& args) {
    absl::StrAppend(out, "*", args.size(), "\r\n");
    for (std::string_view a : args) {
      absl::StrAppend(out, "$", a.size(), "\r\n", absl::string_view(a.data(), a.size()), "\r\n");
    }
  }
  void Send(const std::string& bytes) {
    for (size_t sent = 0; sent < bytes.size();) {
      const ssize_t n = write(fd_, bytes.data() + sent, bytes.size() - sent);
      if (n <= 0) Die("redis write failed");
      sent += n;
    }
  }
  // One reply line ("+OK", "$128", "*64", ...) without CRLF.
  std::string_view Line() {
    for (;;) {
      const size_t end = buf_.find("\r\n", pos_);
      if (end != std::string::npos) {
        std::string_view line(buf_.data() + pos_, end - pos_);
        pos_ = end + 2;
        return line;
      }
      Fill();
    }
  }
  // A bulk string's payload appended to `out` (the "$len" line already read).
  void Bulk(std::string_view header, std::string* out) {
    if (header.empty() || header[0] != '$') Die("redis: unexpected reply " + std::string(header));
    const size_t len = std::stoul(std::string(header.substr(1)));
    while (buf_.size() - pos_ < len + 2) Fill();
    out->append(buf_, pos_, len);
    pos_ += len + 2;
  }
  void Compact() {
    if (pos_ > (1 << 20)) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
  }

 private:
  void Fill() {
    char tmp[1 << 16];
    const ssize_t n = read(fd_, tmp, sizeof(tmp));
    if (n <= 0) Die("redis read failed");
    buf_.append(tmp, n);
  }
  int fd_ = -1;
  std::string buf_;
  size_t pos_ = 0;
};

std::string Key(int64_t row) { return "1:" + std::to_string(row); }

// One system's requests at one batch size. rows_per_s is total rows over total time; on a
// shared machine the median-based rate (batch / p50) is the steadier comparison.
struct Series {
  std::vector<double> latency_us;
  double seconds = 0;
  int64_t rows = 0, bytes = 0;
  json ToJson(int batch) const {
    std::vector<double> l = latency_us;
    std::sort(l.begin(), l.end());
    auto pct = [&](double p) {
      return l[std::min(l.size() - 1, static_cast<size_t>(p * l.size()))];
    };
    return {{"requests", l.size()},
            {"rows_per_s", rows / seconds},
            {"gb_per_s", bytes / seconds / 1e9},
            {"rows_per_s_at_p50", batch / pct(0.50) * 1e6},
            {"p50_us", pct(0.50)},
            {"p99_us", pct(0.99)}};
  }
};

// Requests [from, to) of one system, timed one by one.
template <typename F>
void Time(int from, int to, int batch, F& request, Series* s) {
  const auto t0 = Clock::now();
  for (int i = from; i < to; ++i) {
    const auto a = Clock::now();
    s->bytes += request(i);
    s->latency_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
  }
  s->seconds += bench::SecondsSince(t0);
  s->rows += static_cast<int64_t>(to - from) * batch;
}

// Bench settings: full (the committed results) or --quick (a few seconds).
struct Settings {
  bool quick = false;
  int64_t vocab() const { return quick ? 4096 : 65536; }  // ~4× this many rows per table
  std::vector<int> batch_rows() const {
    if (quick) return {1, 24, 96, 384};
    return {1, 24, 96, 384, 1536, 6144};  // 1 row, then 1..256 tokens × 24 rows
  }
  int iterations(int batch) const { return quick ? 20 : std::clamp(400000 / batch, 100, 4000); }
};

constexpr int kRowsPerToken = 24;  // V4.1-Flash: (max_ngram_size − 1) · n_heads = 3 · 8

// The V4.1 config text `name` (a preset under models/) with its Engram tables reshaped.
std::string PresetText(const std::string& name) {
  std::ifstream in(SourceRoot() / "models" / name / "config.json");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status Generate(const ModelConfig& config, const std::string& text,
                      const std::filesystem::path& dir, const std::string& preset) {
  std::filesystem::remove_all(dir);
  GenerateOptions options;
  options.tokenizer_path = (SourceRoot() / "models" / preset / "tokenizer.json").string();
  return GenerateCheckpoint(config, text, dir.string(), options);
}

// A v41-tiny checkpoint whose Engram tables have rows of `d_e` values (records of
// EngramRecordBytes(d_e) bytes) and about 4·vocab rows each.
std::string MakeCheckpoint(int d_e, int64_t vocab) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dsv4-bench-engram-" + std::to_string(d_e));
  json config = json::parse(PresetText("v41-tiny"));
  json& text_config = config.contains("text_config") ? config["text_config"] : config;
  absl::StatusOr<ModelConfig> preset = ParseModelConfig(config.dump(), dir.string());
  if (!preset.ok()) Die(std::string(preset.status().message()));
  EngramConfig e = preset->engram;
  e.head_dim = d_e;
  e.vocab_size.assign(e.vocab_size.size(), vocab);
  std::vector<int64_t> rows;
  for (const std::vector<int64_t>& heads : EngramHeadSizes(e)) {
    rows.push_back(0);
    for (int64_t p : heads) rows.back() += p;
  }
  text_config["engram_head_dim"] = d_e;
  text_config["engram_vocab_size"] = vocab;
  text_config["engram_num_embeddings"] = rows;
  const std::string text = config.dump(2);
  absl::StatusOr<ModelConfig> parsed = ParseModelConfig(text, dir.string());
  if (!parsed.ok()) Die(std::string(parsed.status().message()));
  if (absl::Status s = Generate(*parsed, text, dir, "v41-tiny"); !s.ok()) {
    Die(std::string(s.message()));
  }
  return dir.string();
}

json RunWidth(int d_e, const Settings& settings, const std::string& store_binary) {
  const std::string dir = MakeCheckpoint(d_e, settings.vocab());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) Die(std::string(ckpt.status().message()));
  const TensorView* values = *(*ckpt)->Get(EngramTableName(1));
  const TensorView* scales = *(*ckpt)->Get(EngramScaleName(1));
  const int64_t rows = values->shape[0], row_bytes = EngramRecordBytes(d_e);
  const int64_t scale_bytes = d_e / kEngramScaleBlock;
  // The records the store serves: values then scales of each row.
  auto record = [&](int64_t row) {
    std::string r(reinterpret_cast<const char*>(values->data) + row * d_e, d_e);
    r.append(reinterpret_cast<const char*>(scales->data) + row * scale_bytes, scale_bytes);
    return r;
  };
  std::printf("records of %lld B (%d F8_E4M3 values + %lld E8M0 scales), %lld rows (%.0f MB)\n",
              static_cast<long long>(row_bytes), d_e, static_cast<long long>(scale_bytes),
              static_cast<long long>(rows), rows * row_bytes / 1e6);

  Child store = Child::Spawn({store_binary, "--checkpoint", dir, "--listen", "127.0.0.1:0"});
  std::string address = store.WaitFor("listening on ");
  address = address.substr(address.find("on ") + 3);
  address.erase(address.find_last_not_of("\r\n") + 1);
  const int redis_port = FreeLoopbackPort();
  Child redis =
      Child::Spawn({"redis-server", "--port", std::to_string(redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--loglevel", "warning"});
  Resp r;
  for (int tries = 0; !r.Connect(redis_port); ++tries) {
    if (tries > 100) Die("redis-server did not start");
    usleep(50000);
  }
  // Load the same rows: one key per row, pipelined MSETs of 1000 keys.
  for (int64_t from = 0; from < rows; from += 1000) {
    std::vector<std::string> keys, records;
    std::vector<std::string_view> args = {"MSET"};
    const int64_t to = std::min(rows, from + 1000);
    for (int64_t row = from; row < to; ++row) {
      keys.push_back(Key(row));
      records.push_back(record(row));
    }
    for (int64_t row = from; row < to; ++row) {
      args.push_back(keys[row - from]);
      args.push_back(records[row - from]);
    }
    std::string cmd;
    Resp::AppendCommand(&cmd, args);
    r.Send(cmd);
    if (r.Line() != "+OK") Die("redis MSET failed");
  }

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  auto stub = engram::v1::EngramStore::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));

  json out = json::array();
  std::mt19937_64 rng(42);
  for (int batch : settings.batch_rows()) {
    const int iterations = settings.iterations(batch), warmup = 10;
    std::vector<std::vector<int64_t>> sets(iterations + warmup, std::vector<int64_t>(batch));
    for (auto& set : sets) {
      for (int64_t& row : set) row = static_cast<int64_t>(rng() % rows);
    }
    std::vector<engram::v1::LookupRequest> requests(sets.size());
    std::vector<std::string> mget(sets.size()), gets(sets.size());
    for (size_t i = 0; i < sets.size(); ++i) {
      requests[i].set_layer(1);
      std::vector<std::string> keys;
      for (int64_t row : sets[i]) {
        requests[i].add_rows(row);
        keys.push_back(Key(row));
      }
      std::vector<std::string_view> margs = {"MGET"};
      for (const std::string& k : keys) {
        margs.push_back(k);
        Resp::AppendCommand(&gets[i], {"GET", k});
      }
      Resp::AppendCommand(&mget[i], margs);
    }
    std::string engram_first, redis_first;
    auto engram_request = [&](int i) -> int64_t {
      grpc::ClientContext context;
      engram::v1::LookupResponse response;
      const grpc::Status s = stub->Lookup(&context, requests[i], &response);
      if (!s.ok()) Die("Lookup: " + s.error_message());
      if (i == 0) engram_first = response.data();
      return static_cast<int64_t>(response.data().size());
    };
    auto mget_request = [&](int i) -> int64_t {
      r.Send(mget[i]);
      std::string_view head = r.Line();
      if (head != absl::StrCat("*", batch)) Die("redis MGET: " + std::string(head));
      std::string data;
      for (int k = 0; k < batch; ++k) r.Bulk(r.Line(), &data);
      r.Compact();
      if (i == 0) redis_first = data;
      return static_cast<int64_t>(data.size());
    };
    auto get_request = [&](int i) -> int64_t {
      r.Send(gets[i]);
      std::string data;
      for (int k = 0; k < batch; ++k) r.Bulk(r.Line(), &data);
      r.Compact();
      return static_cast<int64_t>(data.size());
    };
    // Warm-up, then rounds that alternate the systems so each sees the same background
    // load (the machine may be shared).
    Series engram, redis_mget, redis_get, discard;
    Time(0, warmup, batch, engram_request, &discard);
    Time(0, warmup, batch, mget_request, &discard);
    Time(0, warmup, batch, get_request, &discard);
    constexpr int kRounds = 5;
    for (int round = 0; round < kRounds; ++round) {
      const int from = warmup + iterations * round / kRounds;
      const int to = warmup + iterations * (round + 1) / kRounds;
      Time(from, to, batch, engram_request, &engram);
      Time(from, to, batch, mget_request, &redis_mget);
      Time(from, to, batch, get_request, &redis_get);
    }
    if (engram_first != redis_first) Die("Engram and Redis returned different rows");
    if (engram_first.substr(0, row_bytes) != record(sets[0][0])) {
      Die("Engram returned a record that is not the checkpoint's");
    }
    json row = {{"record_bytes", row_bytes},
                {"format", "F8_E4M3+E8M0/32"},
                {"batch_rows", batch},
                {"batch_tokens", batch >= kRowsPerToken ? batch / kRowsPerToken : 0},
                {"engram_lookup", engram.ToJson(batch)},
                {"redis_mget", redis_mget.ToJson(batch)},
                {"redis_pipelined_get", redis_get.ToJson(batch)}};
    const double best_redis = std::max(row["redis_mget"]["rows_per_s"].get<double>(),
                                       row["redis_pipelined_get"]["rows_per_s"].get<double>());
    const double best_redis_p99 = std::min(row["redis_mget"]["p99_us"].get<double>(),
                                           row["redis_pipelined_get"]["p99_us"].get<double>());
    const double best_redis_p50 =
        std::max(row["redis_mget"]["rows_per_s_at_p50"].get<double>(),
                 row["redis_pipelined_get"]["rows_per_s_at_p50"].get<double>());
    row["throughput_vs_best_redis"] = row["engram_lookup"]["rows_per_s"].get<double>() / best_redis;
    row["p50_rate_vs_best_redis"] =
        row["engram_lookup"]["rows_per_s_at_p50"].get<double>() / best_redis_p50;
    row["p99_below_best_redis"] = row["engram_lookup"]["p99_us"].get<double>() < best_redis_p99;
    std::printf(
        "  batch %4d rows: engram %9.0f rows/s %6.3f GB/s p50 %7.1f p99 %7.1f us | redis MGET "
        "%9.0f "
        "rows/s p99 %7.1f | GETs %9.0f rows/s p99 %7.1f | x%.2f (x%.2f at p50)\n",
        batch, row["engram_lookup"]["rows_per_s"].get<double>(),
        row["engram_lookup"]["gb_per_s"].get<double>(),
        row["engram_lookup"]["p50_us"].get<double>(), row["engram_lookup"]["p99_us"].get<double>(),
        row["redis_mget"]["rows_per_s"].get<double>(), row["redis_mget"]["p99_us"].get<double>(),
        row["redis_pipelined_get"]["rows_per_s"].get<double>(),
        row["redis_pipelined_get"]["p99_us"].get<double>(),
        row["throughput_vs_best_redis"].get<double>(), row["p50_rate_vs_best_redis"].get<double>());
    out.push_back(row);
  }
  store.Stop();
  redis.Stop();
  std::filesystem::remove_all(dir);
  return out;
}

// Logits of a prefill of `prompt` tokens then `decode` one-token steps; returns the prefill
// and the per-decode-step seconds.
std::pair<double, std::vector<double>> Generate(const Model& model, ExpertExecutor& experts,
                                                const std::vector<int32_t>& tokens, int prompt) {
  SequenceState state = model.NewSequence();
  double prefill = 0;
  std::vector<double> steps;
  for (size_t at = 0; at < tokens.size();) {
    const size_t size = at == 0 ? prompt : 1;
    StepInput in{&state, absl::MakeConstSpan(tokens.data() + at, size)};
    const auto t0 = Clock::now();
    absl::StatusOr<Tensor> logits = model.Forward({&in, 1}, experts, LogitRows::kLastPerSequence);
    if (!logits.ok()) Die(std::string(logits.status().message()));
    (at == 0 ? prefill : steps.emplace_back()) = bench::SecondsSince(t0);
    at += size;
  }
  return {prefill, steps};
}

// Other processes on the machine skew timings; the JSON records how busy it was.
double LoadAverage() {
  double load = 0;
  std::ifstream("/proc/loadavg") >> load;
  return load;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Step time of v41-mini with its Engram tables in this process vs on a memory node
// (dsv4-engram-store on loopback), same checkpoint, alternating runs.
json EndToEnd(const Settings& settings, const std::string& store_binary) {
  const std::string preset = settings.quick ? "v41-tiny" : "v41-mini";
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dsv4-bench-engram-" + preset);
  const std::string text = PresetText(preset);
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text, dir.string());
  if (!config.ok()) Die(std::string(config.status().message()));
  std::printf("generating a %s checkpoint in %s ...\n", preset.c_str(), dir.c_str());
  if (absl::Status s = Generate(*config, text, dir, preset); !s.ok()) {
    Die(std::string(s.message()));
  }
  Child store =
      Child::Spawn({store_binary, "--checkpoint", dir.string(), "--listen", "127.0.0.1:0"});
  std::string address = store.WaitFor("listening on ");
  address = address.substr(address.find("on ") + 3);
  address.erase(address.find_last_not_of("\r\n") + 1);

  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir.string());
  if (!ckpt.ok()) Die(std::string(ckpt.status().message()));
  absl::StatusOr<std::unique_ptr<InProcessExecutor>> experts =
      InProcessExecutor::Load(*config, ckpt->get(), /*load_mtp=*/false);
  if (!experts.ok()) Die(std::string(experts.status().message()));
  engram::ClientOptions client_options;
  client_options.servers = {address};
  absl::StatusOr<std::unique_ptr<engram::EngramClient>> client =
      engram::EngramClient::Create(*config, client_options);
  if (!client.ok()) Die(std::string(client.status().message()));
  ModelOptions local_options, remote_options;
  local_options.load_mtp = remote_options.load_mtp = false;
  remote_options.engram_rows = client->get();
  absl::StatusOr<std::unique_ptr<Model>> local = Model::Load(*config, ckpt->get(), local_options);
  absl::StatusOr<std::unique_ptr<Model>> remote = Model::Load(*config, ckpt->get(), remote_options);
  if (!local.ok() || !remote.ok()) {
    Die("loading " + preset +
        " failed: " + std::string((local.ok() ? remote.status() : local.status()).message()));
  }

  const int kPrompt = settings.quick ? 16 : 128, kDecode = settings.quick ? 4 : 32,
            kReps = settings.quick ? 1 : 5;
  std::vector<double> prefill[2], decode[2];
  std::mt19937 rng(5);
  for (int rep = 0; rep < kReps; ++rep) {
    std::vector<int32_t> tokens(kPrompt + kDecode);
    for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % config->vocab_size);
    for (int which = 0; which < 2; ++which) {  // 0 local, 1 remote
      auto [p, steps] = Generate(which == 0 ? **local : **remote, **experts, tokens, kPrompt);
      prefill[which].push_back(p);
      decode[which].insert(decode[which].end(), steps.begin(), steps.end());
    }
  }
  const engram::ClientStats stats = (*client)->stats();
  store.Stop();
  std::filesystem::remove_all(dir);
  const double local_step = Median(decode[0]), remote_step = Median(decode[1]);
  const double local_prefill = Median(prefill[0]), remote_prefill = Median(prefill[1]);
  json result = {
      {"model", preset},
      {"engram_record_bytes", EngramRecordBytes(config->engram.head_dim)},
      {"prompt_tokens", kPrompt},
      {"decode_steps_per_run", kDecode},
      {"runs_each", kReps},
      {"local_prefill_ms", local_prefill * 1e3},
      {"remote_prefill_ms", remote_prefill * 1e3},
      {"prefill_overhead", remote_prefill / local_prefill - 1},
      {"local_decode_step_ms_median", local_step * 1e3},
      {"remote_decode_step_ms_median", remote_step * 1e3},
      {"decode_overhead", remote_step / local_step - 1},
      {"client_stall_ms_per_step", stats.stall_ns / 1e6 / stats.waits * 2},
      {"client_cache_hit_rate", static_cast<double>(stats.cache_hits) /
                                    std::max<uint64_t>(1, stats.cache_hits + stats.rows_fetched)},
      {"client_rpcs", stats.rpcs}};
  std::printf(
      "%s: prefill %d tokens %.1f ms local, %.1f ms remote (%+.1f%%); decode step "
      "%.2f ms local, %.2f ms remote (%+.1f%%); stall %.3f ms/step\n",
      preset.c_str(), kPrompt, local_prefill * 1e3, remote_prefill * 1e3,
      100 * (remote_prefill / local_prefill - 1), local_step * 1e3, remote_step * 1e3,
      100 * (remote_step / local_step - 1), result["client_stall_ms_per_step"].get<double>());
  return result;
}

int Main(int argc, char** argv) {
  std::filesystem::path out = SourceRoot() / "bench/results/engram.json";
  bool end_to_end = true;
  Settings settings;
  bool out_given = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--out" && i + 1 < argc) {
      out = argv[++i];
      out_given = true;
    } else if (std::string(argv[i]) == "--no_end_to_end") {
      end_to_end = false;
    } else if (std::string(argv[i]) == "--quick") {
      settings.quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--out PATH] [--no_end_to_end] [--quick]\n", argv[0]);
      return 2;
    }
  }
  // A quick run never overwrites the committed results unless asked to.
  if (settings.quick && !out_given) {
    out = std::filesystem::temp_directory_path() / "dsv4-bench-engram-quick.json";
  }
  engram::TuneMallocForLargeMessages();  // the client side of the lookups
  const std::string store_binary =
      (std::filesystem::canonical("/proc/self/exe").parent_path() / "dsv4-engram-store").string();
  if (!std::filesystem::exists(store_binary)) Die(store_binary + " is not built");
  json result;
  result["machine"] = bench::MachineJson();
  result["machine"]["load_average_1m_at_start"] = LoadAverage();
  result["setup"] =
      "loopback, one connection per system, one request in flight, random rows; "
      "dsv4-engram-store (gRPC unary Lookup of FP8+E8M0 records from mmap'ed tables) vs "
      "redis-server (Debian, no persistence, one key per row holding the same record) via MGET "
      "and pipelined GETs; 5 interleaved rounds per batch size so background load hits all "
      "systems alike";
  result["quick"] = settings.quick;
  result["lookup_shape"] =
      "deepseek-v4.1-flash records (d_e 256: 264 B = 256 F8_E4M3 + 8 E8M0), 24 rows per token "
      "per Engram layer; batch_tokens = batch_rows / 24";
  result["lookups"] = RunWidth(256, settings, store_binary);
  if (end_to_end) result["end_to_end"] = EndToEnd(settings, store_binary);
  result["machine"]["load_average_1m_at_end"] = LoadAverage();
  std::filesystem::create_directories(out.parent_path());
  std::ofstream(out) << result.dump(2) << "\n";
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) { return dsv4::Main(argc, argv); }
