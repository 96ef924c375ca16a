#include "engine/control_client.h"

#include <openssl/evp.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc/security.h"
#include "rpc/status.h"

namespace dsv4 {
namespace {

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

}  // namespace

absl::StatusOr<std::string> CheckpointConfigSha256(const std::string& checkpoint_dir) {
  std::string digests;
  for (const char* name : {"config.json", "tokenizer.json"}) {
    const std::string path = absl::StrCat(checkpoint_dir, "/", name);
    std::ifstream file(path, std::ios::binary);
    if (!file && std::string(name) == "config.json") {
      return absl::NotFoundError(absl::StrCat("cannot read ", path));
    }
    digests += Sha256Hex(std::string(std::istreambuf_iterator<char>(file), {}));
  }
  return Sha256Hex(digests);
}

absl::StatusOr<std::unique_ptr<ControlClient>> ControlClient::Connect(
    const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
    const std::string& bearer_token, const engine::v1::Hello& hello, absl::Duration timeout) {
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(address, std::move(credentials));
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + timeout))) {
    return absl::UnavailableError(absl::StrCat("no coordinator answered at ", address, " within ",
                                               absl::FormatDuration(timeout)));
  }
  auto client = std::unique_ptr<ControlClient>(new ControlClient());
  client->stub_ = engine::v1::EngineControl::NewStub(channel);
  rpc::AddBearerToken(&client->context_, bearer_token);
  client->stream_ = client->stub_->Connect(&client->context_);
  engine::v1::EngineMessage message;
  *message.mutable_hello() = hello;
  engine::v1::CoordinatorMessage welcome;
  if (!client->stream_->Write(message) || !client->stream_->Read(&welcome)) {
    const grpc::Status s = client->stream_->Finish();
    const std::string refused = absl::StrCat("coordinator ", address, " refused the engine");
    if (s.ok()) return absl::UnavailableError(absl::StrCat(refused, ": stream closed"));
    return rpc::FromGrpc(s, refused);
  }
  if (!welcome.has_welcome()) {
    return absl::InternalError("coordinator's first message was not a Welcome");
  }
  client->heartbeat_interval_ms_ = welcome.welcome().heartbeat_interval_ms();
  ControlClient* self = client.get();
  client->reader_ = std::thread([self] { self->ReadLoop(); });
  return client;
}

void ControlClient::ReadLoop() {
  engine::v1::CoordinatorMessage message;
  while (stream_->Read(&message)) {
    absl::MutexLock lock(&mu_);
    inbox_.push_back(std::move(message));
  }
  const grpc::Status s = stream_->Finish();
  absl::MutexLock lock(&mu_);
  ended_ = true;
  end_status_ = s.ok() ? absl::UnavailableError("the coordinator closed the control stream")
                       : rpc::FromGrpc(s, "control stream");
}

absl::StatusOr<std::vector<engine::v1::CoordinatorMessage>> ControlClient::Receive(
    absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !inbox_.empty() || ended_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (inbox_.empty() && ended_) return end_status_;
  std::vector<engine::v1::CoordinatorMessage> out(std::make_move_iterator(inbox_.begin()),
                                                  std::make_move_iterator(inbox_.end()));
  inbox_.clear();
  return out;
}

absl::Status ControlClient::Send(const engine::v1::EngineMessage& message) {
  absl::MutexLock lock(&write_mu_);
  if (writes_done_ || !stream_->Write(message)) {
    return absl::UnavailableError("the control stream to the coordinator is closed");
  }
  return absl::OkStatus();
}

void ControlClient::Close() {
  {
    absl::MutexLock lock(&write_mu_);
    if (!writes_done_) stream_->WritesDone();
    writes_done_ = true;
  }
  if (reader_.joinable()) reader_.join();
}

ControlClient::~ControlClient() {
  context_.TryCancel();  // unblocks the reader if the coordinator is still talking
  if (reader_.joinable()) reader_.join();
}

}  // namespace dsv4
