// The coordinator's Prometheus metrics: what each method records as seen in the text
// exposition, the bounded series count of expert load, and the HTTP /metrics endpoint on a
// real loopback socket.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/metrics.h"

namespace dsv4::coordinator {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Metrics> StartOrDie(const std::string& listen) {
  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Start(listen);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? *std::move(metrics) : nullptr;
}

// The value of the sample line `series` ("name" or "name{labels}") in an exposition; NaN when
// there is no such line.
double Value(const std::string& scrape, const std::string& series) {
  std::istringstream lines(scrape);
  std::string line;
  while (std::getline(lines, line)) {
    if (absl::StartsWith(line, series + " "))
      return std::strtod(line.c_str() + series.size(), nullptr);
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// Sample lines (not comments) of the metric `name` with labels.
int CountSeries(const std::string& scrape, const std::string& name) {
  std::istringstream lines(scrape);
  std::string line;
  int count = 0;
  while (std::getline(lines, line)) count += absl::StartsWith(line, name + "{");
  return count;
}

TEST(MetricsTest, RequestsCountedByFixedStatusSet) {
  std::unique_ptr<Metrics> metrics = StartOrDie("");
  ASSERT_NE(metrics, nullptr);
  EXPECT_EQ(metrics->address(), "");
  metrics->RequestFinished("ok");
  metrics->RequestFinished("ok");
  metrics->RequestFinished("unauthenticated");
  metrics->RequestFinished(absl::StatusCode::kResourceExhausted);
  metrics->RequestFinished(absl::StatusCode::kOk);
  metrics->RequestFinished("no_such_status");
  metrics->RequestFinished(absl::StatusCode::kDataLoss);  // not in the set either

  const std::string scrape = metrics->Scrape();
  EXPECT_EQ(Value(scrape, "dsv4_requests_total{status=\"ok\"}"), 3);
  EXPECT_EQ(Value(scrape, "dsv4_requests_total{status=\"unauthenticated\"}"), 1);
  EXPECT_EQ(Value(scrape, "dsv4_requests_total{status=\"resource_exhausted\"}"), 1);
  EXPECT_EQ(Value(scrape, "dsv4_requests_total{status=\"other\"}"), 2);
  // Every status exists from the start, at zero.
  EXPECT_EQ(Value(scrape, "dsv4_requests_total{status=\"deadline_exceeded\"}"), 0);
  EXPECT_EQ(CountSeries(scrape, "dsv4_requests_total"),
            static_cast<int>(std::size(Metrics::kStatuses)));
  EXPECT_THAT(scrape, HasSubstr("# TYPE dsv4_requests_total counter"));
}

TEST(MetricsTest, HistogramsCountersAndGauges) {
  std::unique_ptr<Metrics> metrics = StartOrDie("");
  ASSERT_NE(metrics, nullptr);
  metrics->ObserveTimeToFirstToken(0.2);
  metrics->ObserveTimeToFirstToken(3);
  metrics->ObserveTimePerOutputToken(0.03);
  metrics->ObserveEndToEnd(12);
  metrics->ObserveCoordinatorOverhead(0.000004);  // below the 10 µs bucket
  metrics->ObserveCoordinatorOverhead(0.00002);
  metrics->AddGeneratedTokens(100);
  metrics->AddGeneratedTokens(28);
  metrics->AddGeneratedTokens(-5);  // ignored: a counter never goes down
  metrics->AddPromptTokens(7);
  metrics->SetQueueDepth(4);
  metrics->SetQueueDepth(2);
  metrics->SetRunningRequests(9);

  const std::string scrape = metrics->Scrape();
  EXPECT_THAT(scrape, HasSubstr("# TYPE dsv4_time_to_first_token_seconds histogram"));
  EXPECT_EQ(Value(scrape, "dsv4_time_to_first_token_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(Value(scrape, "dsv4_time_to_first_token_seconds_sum"), 3.2);
  EXPECT_EQ(Value(scrape, "dsv4_time_to_first_token_seconds_bucket{le=\"0.25\"}"), 1);
  EXPECT_EQ(Value(scrape, "dsv4_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 2);
  EXPECT_EQ(Value(scrape, "dsv4_time_per_output_token_seconds_count"), 1);
  EXPECT_EQ(Value(scrape, "dsv4_request_duration_seconds_count"), 1);
  EXPECT_EQ(Value(scrape, "dsv4_request_duration_seconds_bucket{le=\"10\"}"), 0);
  EXPECT_EQ(Value(scrape, "dsv4_request_duration_seconds_bucket{le=\"20\"}"), 1);
  EXPECT_EQ(Value(scrape, "dsv4_coordinator_overhead_seconds_count"), 2);
  EXPECT_EQ(Value(scrape, "dsv4_coordinator_overhead_seconds_bucket{le=\"1e-05\"}"), 1);
  EXPECT_EQ(Value(scrape, "dsv4_coordinator_overhead_seconds_bucket{le=\"2.5e-05\"}"), 2);
  EXPECT_EQ(Value(scrape, "dsv4_generated_tokens_total"), 128);
  EXPECT_EQ(Value(scrape, "dsv4_prompt_tokens_total"), 7);
  EXPECT_EQ(Value(scrape, "dsv4_queue_depth"), 2);
  EXPECT_EQ(Value(scrape, "dsv4_running_requests"), 9);
}

TEST(MetricsTest, PerEngineSeries) {
  std::unique_ptr<Metrics> metrics = StartOrDie("");
  ASSERT_NE(metrics, nullptr);
  metrics->SetKvUsage("engine-0", 0.25);
  metrics->SetKvUsage("engine-1", 0.5);
  metrics->SetKvUsage("engine-0", 0.75);
  metrics->SetEngramStallSeconds("engine-0", 1.5);
  metrics->EngineRestarted("engine-1");
  metrics->EngineRestarted("engine-1");

  std::string scrape = metrics->Scrape();
  EXPECT_EQ(Value(scrape, "dsv4_kv_usage_ratio{engine=\"engine-0\"}"), 0.75);
  EXPECT_EQ(Value(scrape, "dsv4_kv_usage_ratio{engine=\"engine-1\"}"), 0.5);
  EXPECT_EQ(Value(scrape, "dsv4_engram_stall_seconds{engine=\"engine-0\"}"), 1.5);
  EXPECT_EQ(Value(scrape, "dsv4_engine_restarts_total{engine=\"engine-1\"}"), 2);

  // A departed engine's gauges go; its restart count stays.
  metrics->RemoveEngine("engine-1");
  metrics->RemoveEngine("never-seen");
  scrape = metrics->Scrape();
  EXPECT_EQ(CountSeries(scrape, "dsv4_kv_usage_ratio"), 1);
  EXPECT_TRUE(std::isnan(Value(scrape, "dsv4_kv_usage_ratio{engine=\"engine-1\"}")));
  EXPECT_EQ(Value(scrape, "dsv4_engine_restarts_total{engine=\"engine-1\"}"), 2);
}

TEST(MetricsTest, ExpertLoadSeriesBoundedByLayers) {
  constexpr int kLayers = 61;
  constexpr int kExperts = 384;
  std::unique_ptr<Metrics> metrics = StartOrDie("");
  ASSERT_NE(metrics, nullptr);
  int64_t routed = 0;
  for (int report = 0; report < 2; ++report) {
    for (int layer = 0; layer < kLayers; ++layer) {
      std::vector<int64_t> tokens(kExperts, 10);
      tokens[layer % kExperts] = 10 + 10 * layer;  // layer 0 balanced, later ones less so
      for (const int64_t t : tokens) routed += t;
      metrics->RecordExpertLoad(layer, tokens);
    }
  }
  const std::string scrape = metrics->Scrape();
  EXPECT_EQ(CountSeries(scrape, "dsv4_expert_load_imbalance"), kLayers);
  EXPECT_EQ(Value(scrape, "dsv4_expert_routed_tokens_total"), routed);
  EXPECT_DOUBLE_EQ(Value(scrape, "dsv4_expert_load_imbalance{layer=\"0\"}"), 1.0);
  // Layer 3: one expert at 40, 383 at 10 → mean (40 + 3830) / 384.
  EXPECT_DOUBLE_EQ(Value(scrape, "dsv4_expert_load_imbalance{layer=\"3\"}"),
                   40.0 / (3870.0 / kExperts));

  // An empty window leaves the layer's last imbalance; all on one expert is the maximum.
  metrics->RecordExpertLoad(3, std::vector<int64_t>(kExperts, 0));
  std::vector<int64_t> one_hot(kExperts, 0);
  one_hot[5] = 12;
  metrics->RecordExpertLoad(4, one_hot);
  const std::string after = metrics->Scrape();
  EXPECT_DOUBLE_EQ(Value(after, "dsv4_expert_load_imbalance{layer=\"3\"}"),
                   40.0 / (3870.0 / kExperts));
  EXPECT_DOUBLE_EQ(Value(after, "dsv4_expert_load_imbalance{layer=\"4\"}"), kExperts);
  EXPECT_EQ(CountSeries(after, "dsv4_expert_load_imbalance"), kLayers);
}

// GET `path` from 127.0.0.1:`port` over a plain socket; the whole response, headers included.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{5, 0};  // a safety net so a broken server fails the test, not hangs it
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    // HTTP/1.0: the server closes the connection after the response, marking its end.
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if (send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  return response;
}

int PortOf(const std::string& address) {
  return std::atoi(address.substr(address.rfind(':') + 1).c_str());
}

TEST(MetricsTest, ExposerServesMetricsOverHttp) {
  std::unique_ptr<Metrics> metrics = StartOrDie("127.0.0.1:0");
  ASSERT_NE(metrics, nullptr);
  ASSERT_TRUE(absl::StartsWith(metrics->address(), "127.0.0.1:")) << metrics->address();
  const int port = PortOf(metrics->address());
  ASSERT_GT(port, 0) << metrics->address();
  metrics->AddGeneratedTokens(42);

  const std::string response = HttpGet(port, "/metrics");
  EXPECT_THAT(response, HasSubstr(" 200 "));
  EXPECT_THAT(response, HasSubstr("\ndsv4_generated_tokens_total 42"));
  EXPECT_THAT(response, HasSubstr("dsv4_requests_total{status=\"ok\"} 0"));
}

TEST(MetricsTest, UnbindableAddressIsUnavailable) {
  // A port some other socket is listening on.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string busy = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Start(busy);
  close(fd);
  ASSERT_FALSE(metrics.ok());
  EXPECT_EQ(metrics.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(metrics.status().message(), HasSubstr(busy));

  // Not an address at all.
  metrics = Metrics::Start("not-an-address:xyz");
  ASSERT_FALSE(metrics.ok());
  EXPECT_EQ(metrics.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(metrics.status().message(), HasSubstr("not-an-address:xyz"));
}

}  // namespace
}  // namespace dsv4::coordinator
