"""What a SavedModel may hold before ``transcode check`` loads and runs it.

``tf.saved_model.load`` runs whatever ops the file holds (resource initialisers at load, the
signature at call): a ``tf.io.write_file`` in either wrote files outside SRC and DST. So
``saved_model.pb`` is parsed first, as data (TensorFlow's own protobuf classes, nothing
loaded or run), and every op of every graph and of every function of its library must be in
:data:`ALLOWED`: arithmetic, array, neural-network and control-flow ops and the variable
handles a model's weights live in. Nothing that reaches outside the computation is there:
no file ops (``ReadFile``, ``WriteFile``, ``MatchingFiles``, ``Save``/``Restore``...), no
Python (``PyFunc``, ``EagerPyFunc``), no network, process, queue, dataset, lookup-table,
summary or debug ops. The ops that restore variables (``RestoreV2``, ``SaveV2`` ...) are
allowed only in the ``__inference__traced_save_N`` / ``__inference__traced_restore_N``
functions every TF2 SavedModel holds, and only where nothing the loader runs can call them
(the loader restores variables by its own code, from the ``variables/`` folder).
"""
from __future__ import annotations

import re

ALLOWED = frozenset("""
Abs Acos Acosh Add AddN AddV2 All Any ApproximateEqual ArgMax ArgMin Asin Asinh Atan Atan2
Atanh AvgPool AvgPool3D BatchMatMul BatchMatMulV2 BatchMatMulV3 BatchToSpaceND BiasAdd
BiasAddV1 Bitcast BitwiseAnd BitwiseOr BitwiseXor BroadcastArgs BroadcastGradientArgs
BroadcastTo Bucketize Case Cast Ceil CheckNumerics ClipByValue Complex ComplexAbs Concat
ConcatOffset ConcatV2 Conj Const Conv Conv2D Conv2DBackpropInput Conv3D Conv3DBackpropInputV2
Cos Cosh Cross Cumprod Cumsum DepthToSpace DepthwiseConv2dNative
DepthwiseConv2dNativeBackpropInput Diag DiagPart Dilation2D DisableCopyOnRead Div DivNoNan
Einsum Elu EnsureShape Equal Erf Erfc Erfinv Exp ExpandDims Expm1 ExtractImagePatches Fill
Floor FloorDiv FloorMod FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 Gather GatherNd
GatherV2 Gelu Greater GreaterEqual IdentityN Identity If Imag InTopKV2 InvertPermutation
Inv IsFinite IsInf IsNan L2Loss LeakyRelu LeftShift Less LessEqual Lgamma LinSpace Log
Log1p LogicalAnd LogicalNot LogicalOr LogSoftmax LRN MatMul MatrixBandPart MatrixDiag
MatrixDiagPart MatrixDiagPartV3 MatrixDiagV3 MatrixSetDiag MatrixSetDiagV3 Max Maximum
MaxPool MaxPool3D MaxPoolV2 MaxPoolWithArgmax Mean Min Minimum MirrorPad Mod Mul MulNoNan
Neg NextAfter NoOp NonMaxSuppressionV3 NotEqual OneHot OnesLike Pack Pad PadV2
ParallelConcat PartitionedCall Placeholder PlaceholderWithDefault Pow PreventGradient Prod
Range Rank ReadVariableOp Real RealDiv Reciprocal Relu Relu6 Reshape ResizeBilinear
ResizeNearestNeighbor ResourceGather ReverseSequence ReverseV2 RightShift Rint Roll Round
Rsqrt ScatterNd Select SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Sinh Size Slice Snapshot
Softmax Softplus Softsign SpaceToBatchND SpaceToDepth Split SplitV Sqrt Square
SquaredDifference Squeeze StatefulPartitionedCall StatelessCase StatelessIf StatelessWhile
StopGradient StridedSlice Sub Sum Tan Tanh TensorListElementShape TensorListFromTensor
TensorListGetItem TensorListLength TensorListPopBack TensorListPushBack TensorListReserve
TensorListResize TensorListSetItem TensorListStack TensorScatterAdd TensorScatterUpdate Tile
TopKV2 Transpose TruncateDiv TruncateMod Unique Unpack UnsortedSegmentMax
UnsortedSegmentMin UnsortedSegmentSum VarHandleOp VarIsInitializedOp While Xdivy Xlog1py
ZerosLike AssignVariableOp AssignAddVariableOp AssignSubVariableOp StaticRegexFullMatch
StringJoin
""".split())

#: Ops that touch the file system, allowed only in a SavedModel's own save/restore functions.
SAVER_OPS = frozenset("SaveV2 RestoreV2 MergeV2Checkpoints ShardedFilename".split())

#: The names TF2 gives those functions (``saved_model/save.py``: ``_traced_save`` and
#: ``_traced_restore``, wrapped in ``__inference_..._N``).
SAVER_FUNCTION = re.compile(r"__inference__traced_(save|restore)_\d+")
