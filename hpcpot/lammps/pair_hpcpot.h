// pair_style hpcpot: an hpcpot model (docs/model-format.md) as a LAMMPS many-body pair style,
// loaded at run time as a plugin (hpcpotplugin.cpp).  Full neighbour list, newton on.
#ifndef LMP_PAIR_HPCPOT_H
#define LMP_PAIR_HPCPOT_H

#include "pair.h"

#include "hpcpot_model.h"

#include <vector>

namespace LAMMPS_NS {

class PairHPCPot : public Pair {
 public:
  explicit PairHPCPot(class LAMMPS *);
  ~PairHPCPot() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 protected:
  hpcpot::Model model;
  bool have_model = false;
  std::vector<int> type_element;  // [LAMMPS type] -> model element index, -1 for NULL
  hpcpot::Scratch scratch;
  std::vector<double> d, fn;      // neighbour displacements and forces of one atom
  std::vector<int> el, idx;       // their elements and LAMMPS indices
  bigint warn_every = 1000;       // timesteps between extrapolation warnings (0: never)
  bigint last_warning = -1;
  double extrapolated_total = 0.0;

  void allocate();
};

}  // namespace LAMMPS_NS

#endif
