// GoogleTest under mpirun (tests/*_mpi_test.cc, registered by dsv4_add_mpi_test). Every
// rank runs every test; only rank 0 prints. Derive fixtures from MpiTest so that a failure
// on any rank fails the test on rank 0, with that rank's messages. A test body must reach
// the same collectives on every rank: prefer EXPECT_* to ASSERT_* before a collective.
#ifndef DSV4_TESTS_MPI_TEST_UTIL_H_
#define DSV4_TESTS_MPI_TEST_UTIL_H_

#include <mpi.h>

#include "gtest/gtest.h"

namespace dsv4::testing {

int WorldRank();
int WorldSize();

class MpiTest : public ::testing::Test {
 protected:
  // Collective over MPI_COMM_WORLD: gathers every rank's failures to rank 0.
  void TearDown() override;
};

}  // namespace dsv4::testing

#endif  // DSV4_TESTS_MPI_TEST_UTIL_H_
