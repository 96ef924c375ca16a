// main() of the MPI test binaries: MPI around GoogleTest, one printer (rank 0), and an exit
// code that is non-zero on every rank when any rank failed.
#include <mpi.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/mpi_test_util.h"

namespace dsv4::testing {

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int WorldSize() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

void MpiTest::TearDown() {
  std::string failures;
  const ::testing::TestResult* result =
      ::testing::UnitTest::GetInstance()->current_test_info()->result();
  for (int i = 0; i < result->total_part_count(); ++i) {
    const ::testing::TestPartResult& part = result->GetTestPartResult(i);
    if (!part.failed()) continue;
    failures += std::string(part.file_name() ? part.file_name() : "?") + ":" +
                std::to_string(part.line_number()) + ": " + part.message() + "\n";
  }
  const int size = WorldSize();
  int length = static_cast<int>(failures.size());
  std::vector<int> lengths(size), displs(size);
  MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  int total = 0;
  for (int r = 0; r < size; ++r) {
    displs[r] = total;
    total += lengths[r];
  }
  std::string all(total, '\0');
  MPI_Gatherv(failures.data(), length, MPI_CHAR, all.data(), lengths.data(), displs.data(),
              MPI_CHAR, 0, MPI_COMM_WORLD);
  if (WorldRank() != 0) return;
  for (int r = 1; r < size; ++r) {
    if (lengths[r] > 0)
      ADD_FAILURE() << "rank " << r << " failed:\n" << all.substr(displs[r], lengths[r]);
  }
}

}  // namespace dsv4::testing

int main(int argc, char** argv) {
  // The dispatcher's progress thread calls MPI beside the rank's main thread.
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  if (dsv4::testing::WorldRank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
