// The hpcpot model in C++: see hpcpot_model.h and docs/model-format.md.
#include "hpcpot_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace hpcpot {

// ------------------------------------------------------------------ JSON

namespace {

struct Parser {
  const std::string &t;
  size_t p = 0;
  explicit Parser(const std::string &text) : t(text) {}

  [[noreturn]] void fail(const std::string &what) const {
    throw std::runtime_error("JSON: " + what + " at byte " + std::to_string(p));
  }
  void ws() {
    while (p < t.size() && (t[p] == ' ' || t[p] == '\n' || t[p] == '\r' || t[p] == '\t')) ++p;
  }
  bool eat(char c) {
    ws();
    if (p < t.size() && t[p] == c) {
      ++p;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  std::string string_literal() {
    expect('"');
    std::string out;
    while (p < t.size() && t[p] != '"') {
      char c = t[p++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p >= t.size()) fail("unterminated escape");
      char e = t[p++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {  // model files are ASCII; keep the code point if it is, else '?'
          if (p + 4 > t.size()) fail("bad \\u escape");
          long cp = std::strtol(t.substr(p, 4).c_str(), nullptr, 16);
          p += 4;
          out += cp < 128 ? static_cast<char>(cp) : '?';
          break;
        }
        default: fail("bad escape");
      }
    }
    if (p >= t.size()) fail("unterminated string");
    ++p;
    return out;
  }
  Json value() {
    ws();
    if (p >= t.size()) fail("unexpected end");
    Json v;
    char c = t[p];
    if (c == '{') {
      ++p;
      v.kind = Json::OBJECT;
      if (eat('}')) return v;
      do {
        ws();
        std::string key = string_literal();
        expect(':');
        v.object[key] = value();
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++p;
      v.kind = Json::ARRAY;
      if (eat(']')) return v;
      do v.array.push_back(value());
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.kind = Json::STRING;
      v.string = string_literal();
    } else if (t.compare(p, 4, "true") == 0) {
      v.kind = Json::BOOL;
      v.boolean = true;
      p += 4;
    } else if (t.compare(p, 5, "false") == 0) {
      v.kind = Json::BOOL;
      p += 5;
    } else if (t.compare(p, 4, "null") == 0) {
      p += 4;
    } else {
      // strtod is correctly rounded, so Python's repr of a float64 comes back bit for bit
      const char *start = t.c_str() + p;
      char *end = nullptr;
      v.number = std::strtod(start, &end);
      if (end == start) fail("unexpected character");
      v.kind = Json::NUMBER;
      p += end - start;
    }
    return v;
  }
};

}  // namespace

Json Json::parse(const std::string &text) {
  Parser ps(text);
  Json v = ps.value();
  ps.ws();
  if (ps.p != text.size()) ps.fail("trailing characters");
  return v;
}

const Json &Json::at(const std::string &key) const {
  if (kind != OBJECT) throw std::runtime_error("expected an object holding '" + key + "'");
  auto it = object.find(key);
  if (it == object.end()) throw std::runtime_error("missing field '" + key + "'");
  return it->second;
}

bool Json::has(const std::string &key) const { return kind == OBJECT && object.count(key) > 0; }

double Json::num() const {
  if (kind != NUMBER) throw std::runtime_error("expected a number");
  return number;
}

const std::string &Json::str() const {
  if (kind != STRING) throw std::runtime_error("expected a string");
  return string;
}

const std::vector<Json> &Json::arr() const {
  if (kind != ARRAY) throw std::runtime_error("expected a list");
  return array;
}

// ------------------------------------------------------------------ model file

int Model::element_index(const std::string &symbol) const {
  for (size_t e = 0; e < elements.size(); ++e)
    if (elements[e] == symbol) return static_cast<int>(e);
  return -1;
}

Model Model::from_json(const std::string &text, const std::string &source) {
  Model m;
  try {
    Json d = Json::parse(text);
    // format 2 = format 1 plus "input_scaling" (docs/model-format.md)
    const std::string format = d.has("format") && d.at("format").kind == Json::STRING ? d.at("format").str() : "";
    if (format != "hpcpot-model-1" && format != "hpcpot-model-2")
      throw std::runtime_error("not an hpcpot model file (format \"hpcpot-model-1\" or \"hpcpot-model-2\" expected)");
    const std::string scaling = format == "hpcpot-model-2" && d.has("input_scaling") ? d.at("input_scaling").str() : "minmax";
    if (scaling != "minmax" && scaling != "standard")
      throw std::runtime_error("unknown input_scaling '" + scaling + "'");
    for (const Json &e : d.at("elements").arr()) m.elements.push_back(e.str());
    const int ne = static_cast<int>(m.elements.size());
    if (ne == 0) throw std::runtime_error("no elements");
    const Json &fp = d.at("fingerprints");
    m.cutoff = fp.at("cutoff").num();
    if (!(m.cutoff > 0.0)) throw std::runtime_error("cutoff must be positive");
    const std::string act = d.at("network").at("activation").str();
    if (act == "tanh") m.activation = TANH;
    else if (act == "sigmoid") m.activation = SIGMOID;
    else if (act == "linear") m.activation = LINEAR;
    else throw std::runtime_error("unknown activation '" + act + "'");
    std::vector<int> hidden;
    for (const Json &h : d.at("network").at("hidden").arr()) hidden.push_back(static_cast<int>(h.num()));

    auto index_of = [&](const std::string &s) {
      int k = m.element_index(s);
      if (k < 0) throw std::runtime_error("function refers to unknown element '" + s + "'");
      return k;
    };
    const std::vector<Json> &params = d.at("parameters").arr();
    size_t off = 0;
    auto next = [&]() {
      if (off >= params.size()) throw std::runtime_error("too few parameters for the layout");
      return params[off++].num();
    };
    m.per_element.resize(ne);
    for (int c = 0; c < ne; ++c) {
      ElementModel &em = m.per_element[c];
      const std::string &el = m.elements[c];
      for (const Json &f : fp.at("functions").at(el).arr()) {
        SymmetryFunction s{};
        const std::string type = f.at("type").str();
        s.eta = f.at("eta").num();
        if (type == "G2") {
          s.type = 2;
          s.rs = f.at("Rs").num();
          s.e1 = s.e2 = index_of(f.at("element").str());
        } else if (type == "G4") {
          s.type = 4;
          s.zeta = f.at("zeta").num();
          s.gamma = f.at("gamma").num();
          s.pref = std::pow(2.0, 1.0 - s.zeta);
          const std::vector<Json> &pe = f.at("elements").arr();
          if (pe.size() != 2) throw std::runtime_error("G4 needs two elements");
          s.e1 = index_of(pe[0].str());
          s.e2 = index_of(pe[1].str());
          if (s.e1 > s.e2) std::swap(s.e1, s.e2);
        } else {
          throw std::runtime_error("unknown symmetry function type '" + type + "'");
        }
        em.functions.push_back(s);
      }
      const int nf = static_cast<int>(em.functions.size());
      const Json &sc = d.at("scaling").at(el);
      for (const Json &v : sc.at("min").arr()) em.gmin.push_back(v.num());
      for (const Json &v : sc.at("max").arr()) em.gmax.push_back(v.num());
      if (static_cast<int>(em.gmin.size()) != nf || static_cast<int>(em.gmax.size()) != nf)
        throw std::runtime_error("scaling of " + el + " does not match its " + std::to_string(nf) + " functions");
      // the network input x = (G - lo) * factor - 1: min-max takes [min, max] to [-1, 1],
      // standardising takes mean -/+ std there, i.e. x = (G - mean) / std
      std::vector<double> mean, sd;
      if (scaling == "standard") {
        for (const Json &v : sc.at("mean").arr()) mean.push_back(v.num());
        for (const Json &v : sc.at("std").arr()) sd.push_back(v.num());
        if (static_cast<int>(mean.size()) != nf || static_cast<int>(sd.size()) != nf)
          throw std::runtime_error("mean/std of " + el + " do not match its " + std::to_string(nf) + " functions");
      }
      for (int f = 0; f < nf; ++f) {
        const double lo = scaling == "standard" ? mean[f] - sd[f] : em.gmin[f];
        const double hi = scaling == "standard" ? mean[f] + sd[f] : em.gmax[f];
        em.lo.push_back(lo);
        em.factor.push_back(hi - lo > 0.0 ? 2.0 / (hi - lo) : 0.0);
      }
      em.g2_of.assign(ne, {});
      em.g4_of.assign(ne * ne, {});
      for (int f = 0; f < nf; ++f) {
        const SymmetryFunction &s = em.functions[f];
        if (s.type == 2) em.g2_of[s.e1].push_back(f);
        else em.g4_of[s.e1 * ne + s.e2].push_back(f);
      }
      // network layers, in the flat parameter order of docs/model-format.md
      std::vector<int> sizes{nf};
      sizes.insert(sizes.end(), hidden.begin(), hidden.end());
      sizes.push_back(1);
      for (size_t l = 0; l + 1 < sizes.size(); ++l) {
        Layer L;
        L.n_in = sizes[l];
        L.n_out = sizes[l + 1];
        for (int k = 0; k < L.n_out * L.n_in; ++k) L.W.push_back(next());
        for (int k = 0; k < L.n_out; ++k) L.b.push_back(next());
        em.layers.push_back(L);
      }
    }
    for (int c = 0; c < ne; ++c) {
      m.per_element[c].slope = next();
      m.per_element[c].intercept = next();
    }
    if (off != params.size())
      throw std::runtime_error(std::to_string(params.size()) + " parameters, the layout needs " + std::to_string(off));
  } catch (const std::runtime_error &err) {
    throw std::runtime_error(source + ": " + err.what());
  }
  return m;
}

// ------------------------------------------------------------------ evaluation

namespace {

// Taylor coefficients of cos x and sin x / x in y = x^2, to n = 13 (as
// hpcpot.potential.fingerprints): on 0 <= x <= pi both are within 1.3e-15 of libm.  In the
// triplet loop they give fc(R_jk) and fc'(R_jk)/R_jk from R_jk^2, without sqrt, cos, sin or
// a division.
constexpr double COS_Y[14] = {1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05,
                              -2.755731922398589e-07, 2.08767569878681e-09, -1.1470745597729725e-11,
                              4.779477332387385e-14, -1.5619206968586225e-16, 4.110317623312165e-19,
                              -8.896791392450574e-22, 1.6117375710961184e-24, -2.4795962632247976e-27};
constexpr double SINC_Y[14] = {1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984,
                               2.7557319223985893e-06, -2.505210838544172e-08, 1.6059043836821613e-10,
                               -7.647163731819816e-13, 2.8114572543455206e-15, -8.22063524662433e-18,
                               1.9572941063391263e-20, -3.868170170630684e-23, 6.446950284384474e-26,
                               -9.183689863795546e-29};

// b^n for a whole n >= 0 by repeated squaring (zeta = 16 is common: 4 products, not 15)
inline double whole_power(double b, int n) {
  double r = 1.0;
  while (n > 0) {
    if (n & 1) r *= b;
    b *= b;
    n >>= 1;
  }
  return r;
}

}  // namespace

double Model::atom(int c, int nn, const double *d, const int *el, double *fn, Scratch &s,
                   bool &extrapolated) const {
  const ElementModel &em = per_element[c];
  const int nf = static_cast<int>(em.functions.size());
  const int ne = static_cast<int>(elements.size());
  const double rc = cutoff, rc2 = rc * rc, pic = M_PI / rc;
  s.r.resize(nn);
  s.fc.resize(nn);
  s.dfc_r.resize(nn);
  s.G.assign(nf, 0.0);
  s.dG.assign(static_cast<size_t>(nn) * nf * 3, 0.0);  // dG[(q * nf + f) * 3 + x] = dG_f/dr_q,x
  for (int q = 0; q < nn; ++q) {
    const double *D = d + 3 * q;
    const double r = std::sqrt(D[0] * D[0] + D[1] * D[1] + D[2] * D[2]);
    s.r[q] = r;
    if (r < rc) {
      s.fc[q] = 0.5 * (std::cos(pic * r) + 1.0);
      s.dfc_r[q] = -0.5 * pic * std::sin(pic * r) / r;
    } else {
      s.fc[q] = 0.0;
      s.dfc_r[q] = 0.0;
    }
  }
  double *G = s.G.data();
  double *dG = s.dG.data();
  // ---- G2: exp(-eta (r - Rs)^2 / Rc^2) fc(r), summed over neighbours of the function's element
  for (int q = 0; q < nn; ++q) {
    if (s.fc[q] == 0.0) continue;
    const double r = s.r[q];
    const double *D = d + 3 * q;
    for (int f : em.g2_of[el[q]]) {
      const SymmetryFunction &sf = em.functions[f];
      const double ex = std::exp(-sf.eta * (r - sf.rs) * (r - sf.rs) / rc2);
      G[f] += ex * s.fc[q];
      // d/dD of ex*fc, D = r_q - r_i: (ex' fc + ex fc') D / r
      const double dt = ex * (s.dfc_r[q] - 2.0 * sf.eta * (r - sf.rs) / rc2 * s.fc[q] / r);
      double *g = dG + (static_cast<size_t>(q) * nf + f) * 3;
      g[0] += dt * D[0];
      g[1] += dt * D[1];
      g[2] += dt * D[2];
    }
  }
  // ---- G4 over unordered neighbour pairs (q, p), all three distances within Rc
  for (int q = 0; q < nn; ++q) {
    if (s.fc[q] == 0.0) continue;
    const double *Dj = d + 3 * q;
    const double rij = s.r[q];
    for (int p = q + 1; p < nn; ++p) {
      if (s.fc[p] == 0.0) continue;
      const int e1 = std::min(el[q], el[p]), e2 = std::max(el[q], el[p]);
      const std::vector<int> &fl = em.g4_of[e1 * ne + e2];
      if (fl.empty()) continue;
      const double *Dk = d + 3 * p;
      const double Djk[3] = {Dk[0] - Dj[0], Dk[1] - Dj[1], Dk[2] - Dj[2]};
      const double rjk2 = Djk[0] * Djk[0] + Djk[1] * Djk[1] + Djk[2] * Djk[2];
      if (rjk2 >= rc2) continue;
      const double y = pic * pic * rjk2;  // fc(R_jk) = (cos(sqrt y) + 1) / 2, as polynomials in y
      double cy = COS_Y[13], sy = SINC_Y[13];
      for (int k = 12; k >= 0; --k) {
        cy = cy * y + COS_Y[k];
        sy = sy * y + SINC_Y[k];
      }
      const double fcjk = 0.5 * (cy + 1.0);
      const double dfcjk_r = -0.5 * pic * pic * sy;
      const double rik = s.r[p];
      const double inv_ijik = 1.0 / (rij * rik);
      const double cos = (Dj[0] * Dk[0] + Dj[1] * Dk[1] + Dj[2] * Dk[2]) * inv_ijik;
      const double rsum = rij * rij + rik * rik + rjk2;
      const double fcs = s.fc[q] * s.fc[p] * fcjk;
      // per-triplet factors of the derivatives (the function loop only scales them)
      const double a_q = s.fc[p] * fcjk * s.dfc_r[q], a_p = s.fc[q] * fcjk * s.dfc_r[p];
      const double a_jk = s.fc[q] * s.fc[p] * dfcjk_r;
      const double cos_ii = cos / (rij * rij), cos_kk = cos / (rik * rik);
      // the exponential depends on eta only, and functions come eta by eta: cache it
      double last_eta = -1.0, ex = 0.0;
      for (int f : fl) {
        const SymmetryFunction &sf = em.functions[f];
        const double base = 1.0 + sf.gamma * cos;
        if (base <= 0.0) continue;
        if (sf.eta != last_eta) {
          ex = std::exp(-sf.eta * rsum / rc2);
          last_eta = sf.eta;
        }
        const int zi = static_cast<int>(sf.zeta);  // base^(zeta - 1)
        const double pw1 = (zi == sf.zeta && zi >= 1) ? whole_power(base, zi - 1) : std::pow(base, sf.zeta - 1.0);
        const double t = sf.pref * pw1 * base * ex * fcs;
        G[f] += t;
        // t as a function of D_ij and D_ik (D_jk = D_ik - D_ij)
        const double dpow = sf.pref * sf.zeta * pw1 * sf.gamma * ex * fcs;  // dt/dcos
        const double tl = t * (-2.0 * sf.eta / rc2);  // t d(ln ex)/d(R^2)
        const double tb = sf.pref * pw1 * base * ex;  // t / fcs
        const double a_ij = tl + tb * a_q;
        const double a_ik = tl + tb * a_p;
        const double cij = dpow * inv_ijik;
        const double cii = dpow * cos_ii;
        const double ckk = dpow * cos_kk;
        const double gjk = tl + tb * a_jk;
        double *gj = dG + (static_cast<size_t>(q) * nf + f) * 3;
        double *gk = dG + (static_cast<size_t>(p) * nf + f) * 3;
        for (int x = 0; x < 3; ++x) {
          gj[x] += cij * Dk[x] - cii * Dj[x] + a_ij * Dj[x] - gjk * Djk[x];
          gk[x] += cij * Dj[x] - ckk * Dk[x] + a_ik * Dk[x] + gjk * Djk[x];
        }
      }
    }
  }
  // ---- scaling, with the extrapolation check of hpcpot.evaluate (relative margin 1e-6)
  s.x.resize(nf);
  for (int f = 0; f < nf; ++f) {
    const double rng = em.gmax[f] - em.gmin[f];
    const double tol = 1e-6 * (rng > 0.0 ? rng : 1.0);
    if (G[f] < em.gmin[f] - tol || G[f] > em.gmax[f] + tol) extrapolated = true;
    s.x[f] = em.factor[f] > 0.0 ? (G[f] - em.lo[f]) * em.factor[f] - 1.0 : 0.0;
  }
  // ---- network: forward, keeping activations' derivatives for the input gradient
  const int nl = static_cast<int>(em.layers.size());
  s.a.resize(nl);
  s.d1.resize(nl);
  const double *in = s.x.data();
  for (int l = 0; l + 1 < nl; ++l) {
    const Layer &L = em.layers[l];
    s.a[l].resize(L.n_out);
    s.d1[l].resize(L.n_out);
    for (int o = 0; o < L.n_out; ++o) {
      double z = L.b[o];
      const double *w = L.W.data() + static_cast<size_t>(o) * L.n_in;
      for (int i = 0; i < L.n_in; ++i) z += w[i] * in[i];
      double a, d1;
      switch (activation) {
        case TANH: a = std::tanh(z); d1 = 1.0 - a * a; break;
        case SIGMOID: a = 1.0 / (1.0 + std::exp(-z)); d1 = a * (1.0 - a); break;
        default: a = z; d1 = 1.0; break;
      }
      s.a[l][o] = a;
      s.d1[l][o] = d1;
    }
    in = s.a[l].data();
  }
  const Layer &out = em.layers[nl - 1];
  double net = out.b[0];
  for (int i = 0; i < out.n_in; ++i) net += out.W[i] * in[i];
  const double energy = em.slope * net + em.intercept;
  // ---- backward: g = dE/dG = slope * dN/dx * factor
  std::vector<double> &abar = s.g;  // reused: gradient with respect to the current layer's input
  abar.assign(out.W.begin(), out.W.end());
  for (int l = nl - 2; l >= 0; --l) {
    const Layer &L = em.layers[l];
    std::vector<double> next(L.n_in, 0.0);
    for (int o = 0; o < L.n_out; ++o) {
      const double zbar = abar[o] * s.d1[l][o];
      const double *w = L.W.data() + static_cast<size_t>(o) * L.n_in;
      for (int i = 0; i < L.n_in; ++i) next[i] += zbar * w[i];
    }
    abar.swap(next);
  }
  for (int f = 0; f < nf; ++f) abar[f] *= em.slope * em.factor[f];
  // ---- forces on the neighbours: -sum_f dE/dG_f dG_f/dr_q
  for (int q = 0; q < nn; ++q) {
    double fx = 0.0, fy = 0.0, fz = 0.0;
    const double *g = dG + static_cast<size_t>(q) * nf * 3;
    for (int f = 0; f < nf; ++f) {
      fx += abar[f] * g[3 * f];
      fy += abar[f] * g[3 * f + 1];
      fz += abar[f] * g[3 * f + 2];
    }
    fn[3 * q] = -fx;
    fn[3 * q + 1] = -fy;
    fn[3 * q + 2] = -fz;
  }
  return energy;
}

}  // namespace hpcpot
