// The hpcpot model file (docs/model-format.md, format "hpcpot-model-1") in C++: a small JSON
// reader, the symmetry functions with their derivatives, the scaling and the per-element
// networks.  Nothing here depends on LAMMPS, so the same code could serve another MD engine.
// Units: energies in eV, lengths in Angstrom, forces in eV/Angstrom.
#ifndef HPCPOT_MODEL_H
#define HPCPOT_MODEL_H

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace hpcpot {

// A parsed JSON value: just what a model file needs (objects, arrays, strings, numbers,
// true/false/null).
struct Json {
  enum Kind { NUL, BOOL, NUMBER, STRING, ARRAY, OBJECT } kind = NUL;
  double number = 0.0;
  bool boolean = false;
  std::string string;
  std::vector<Json> array;
  std::map<std::string, Json> object;

  static Json parse(const std::string &text);    // throws std::runtime_error
  const Json &at(const std::string &key) const;  // object member; throws when missing
  bool has(const std::string &key) const;
  double num() const;
  const std::string &str() const;
  const std::vector<Json> &arr() const;
};

struct SymmetryFunction {
  int type;        // 2 (radial G2) or 4 (angular G4)
  double eta;      // dimensionless (divided by Rc^2 in the formulas)
  double rs;       // G2: shift, Angstrom
  double zeta;     // G4
  double gamma;    // G4: +1 or -1
  double pref;     // G4: 2^(1 - zeta)
  int e1, e2;      // neighbour element(s); G2 uses e1 only; G4 has e1 <= e2
};

struct Layer {
  int n_out, n_in;
  std::vector<double> W;  // (n_out, n_in) row-major
  std::vector<double> b;  // (n_out)
};

struct ElementModel {
  std::vector<SymmetryFunction> functions;  // in list order: index = fingerprint component
  std::vector<double> gmin, gmax;           // training range (the extrapolation check)
  std::vector<double> lo, factor;           // network input x = (G - lo) * factor - 1 (0 where factor = 0)
  std::vector<Layer> layers;                // hidden layers, then the linear output layer
  double slope = 1.0, intercept = 0.0;      // eV
  // functions grouped for the kernels: G2 by neighbour element, G4 by neighbour pair
  std::vector<std::vector<int>> g2_of;      // [element] -> function indices
  std::vector<std::vector<int>> g4_of;      // [e1 * n_el + e2] (e1 <= e2) -> function indices
};

enum Activation { TANH, SIGMOID, LINEAR };

// Scratch memory for one atom's evaluation, reused between atoms.
struct Scratch {
  std::vector<double> r, fc, dfc_r, G, dG, x, g;
  std::vector<std::vector<double>> a, d1;
};

class Model {
 public:
  std::vector<std::string> elements;  // sorted; index = element index
  double cutoff = 0.0;                // Rc, Angstrom
  Activation activation = TANH;
  std::vector<ElementModel> per_element;

  // Parse the JSON text of a model file; throws std::runtime_error naming the problem.
  static Model from_json(const std::string &text, const std::string &source);

  int element_index(const std::string &symbol) const;  // -1 if unknown

  // Energy of one atom of element c (eV) and the forces its energy puts on its neighbours.
  // Input: nn neighbours within the cutoff, d[3q..3q+2] = r_q - r_i (Angstrom), el[q] their
  // element indices.  Output: fn[3q..3q+2] = -dE_i/dr_q (eV/Angstrom) for every neighbour;
  // the force on i itself is minus their sum.  extrapolated: set true when a fingerprint
  // component leaves the training range by more than a relative 1e-6.
  double atom(int c, int nn, const double *d, const int *el, double *fn, Scratch &s,
              bool &extrapolated) const;
};

}  // namespace hpcpot

#endif
