// The generated public API compiles, links and round-trips through the wire format.
#include <gtest/gtest.h>

#include "proto/inference.grpc.pb.h"
#include "proto/inference.pb.h"

namespace {

TEST(ProtoTest, GenerateRequestRoundTrips) {
  dsv4::v1::GenerateRequest request;
  request.set_text("hello");
  request.set_max_tokens(16);
  request.mutable_sampling()->set_temperature(0.7f);
  request.add_stop_token_ids(1);
  std::string wire;
  ASSERT_TRUE(request.SerializeToString(&wire));
  dsv4::v1::GenerateRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  EXPECT_EQ(parsed.text(), "hello");
  EXPECT_EQ(parsed.prompt_case(), dsv4::v1::GenerateRequest::kText);
  EXPECT_EQ(parsed.max_tokens(), 16);
  EXPECT_FLOAT_EQ(parsed.sampling().temperature(), 0.7f);
  ASSERT_EQ(parsed.stop_token_ids_size(), 1);
}

TEST(ProtoTest, ServiceHasTheDocumentedMethods) {
  const auto* service = dsv4::v1::Inference::service_full_name();
  EXPECT_STREQ(service, "dsv4.v1.Inference");
  const auto* descriptor = dsv4::v1::GenerateRequest::descriptor()->file()->service(0);
  ASSERT_NE(descriptor->FindMethodByName("Generate"), nullptr);
  EXPECT_TRUE(descriptor->FindMethodByName("Generate")->server_streaming());
  EXPECT_NE(descriptor->FindMethodByName("GetClusterStatus"), nullptr);
}

}  // namespace
