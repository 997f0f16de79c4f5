"""Generate the two offline stand-ins for the paper's data sets (paper Section 3; book chapter on data).

``school_math_standin.jsonl`` imitates BELLE's School_math: Chinese arithmetic word problems with a
step-by-step solution that ends in a final answer. ``alpaca_zh_standin.jsonl`` imitates Alpaca_Chinese:
Chinese instructions, an optional input, and a short answer that can be checked (unit conversions, list
and string operations, facts from the tables below). Both use the hub sets' schema
(instruction / input / output). Only the standard library is used and every draw comes from a seeded
``random.Random``, so each run writes byte-identical files.

Usage: python data/make_standins.py [--out DIR]
"""

import argparse
import functools
import json
import os
import random
import tempfile
from pathlib import Path

RECORDS_PER_SET = 1000
SCHOOL_MATH_SEED = 20240301
ALPACA_ZH_SEED = 20240302

NAMES = ["小明", "小红", "小华", "小刚", "小丽", "小芳", "小军", "小强",
         "小燕", "小亮", "小林", "小雪", "小东", "小兰", "小杰", "小文"]
STATIONERY = [("铅笔", "支"), ("笔记本", "本"), ("橡皮", "块"), ("尺子", "把"),
              ("气球", "个"), ("贴纸", "张"), ("彩笔", "盒"), ("信封", "个")]
SHARED_THINGS = [("故事书", "本"), ("苹果", "个"), ("铅笔", "支"), ("练习本", "本"), ("糖果", "颗")]
VEHICLE_SPEEDS = [("汽车", 40, 90), ("自行车", 10, 20), ("火车", 80, 160), ("摩托车", 30, 60)]
RELATIVE_GAPS = [("妈妈", 22, 35), ("爸爸", 24, 38), ("哥哥", 2, 6), ("姐姐", 1, 7)]
FIELDS = ["花坛", "菜地", "游泳池", "操场", "鱼塘"]
TREE_PAIRS = [("苹果树", "梨树"), ("桃树", "杏树"), ("橘子树", "柚子树")]
SUBJECTS = ["数学", "语文", "英语", "科学"]


def table(text):
    """Parse "key:value key:value ..." into a dict: the tables read as one line per subject."""
    return dict(item.split(":") for item in text.split())


CAPITALS = table("中国:北京 日本:东京 韩国:首尔 法国:巴黎 英国:伦敦 德国:柏林 意大利:罗马 西班牙:马德里 "
                 "葡萄牙:里斯本 俄罗斯:莫斯科 美国:华盛顿 加拿大:渥太华 巴西:巴西利亚 阿根廷:布宜诺斯艾利斯 "
                 "澳大利亚:堪培拉 新西兰:惠灵顿 埃及:开罗 肯尼亚:内罗毕 印度:新德里 泰国:曼谷 越南:河内 "
                 "希腊:雅典 荷兰:阿姆斯特丹 瑞典:斯德哥尔摩 挪威:奥斯陆 芬兰:赫尔辛基 波兰:华沙 "
                 "土耳其:安卡拉 蒙古:乌兰巴托 奥地利:维也纳")
ELEMENTS = table("氢:H 氦:He 锂:Li 碳:C 氮:N 氧:O 氟:F 氖:Ne 钠:Na 镁:Mg 铝:Al 硅:Si "
                 "磷:P 硫:S 氯:Cl 钾:K 钙:Ca 铁:Fe 铜:Cu 锌:Zn 银:Ag 金:Au 汞:Hg 铅:Pb")
ENGLISH = table("苹果:apple 香蕉:banana 葡萄:grape 西瓜:watermelon 草莓:strawberry 猫:cat 狗:dog 马:horse "
                "老虎:tiger 狮子:lion 大象:elephant 兔子:rabbit 鸟:bird 鱼:fish 书:book 桌子:table 椅子:chair "
                "学校:school 老师:teacher 学生:student 医生:doctor 水:water 太阳:sun 月亮:moon 星星:star "
                "红色:red 蓝色:blue 绿色:green 黄色:yellow 汽车:car 火车:train 自行车:bicycle 朋友:friend "
                "花:flower 树:tree 河:river 山:mountain 牛奶:milk 面包:bread")
ANTONYMS = table("大:小 多:少 长:短 快:慢 冷:热 黑:白 开:关 上:下 左:右 前:后 买:卖 胖:瘦 新:旧 早:晚 "
                      "真:假 远:近 轻:重 深:浅 宽:窄 开始:结束 安全:危险 成功:失败 简单:复杂 增加:减少 "
                      "进步:退步 光明:黑暗 喜欢:讨厌 干净:肮脏 勇敢:胆小 热闹:安静")
CATEGORIES = {"水果": "苹果 香蕉 橘子 葡萄 西瓜 草莓 桃子 梨".split(),
              "动物": "猫 狗 老虎 狮子 大象 兔子 熊猫 猴子".split(),
              "交通工具": "汽车 火车 飞机 轮船 自行车 地铁 公交车 摩托车".split(),
              "颜色": "红色 蓝色 绿色 黄色 紫色 白色 黑色 橙色".split()}
UNIT_FACTORS = [("米", "厘米", 100), ("千米", "米", 1000), ("千克", "克", 1000), ("小时", "分钟", 60),
                ("分钟", "秒", 60), ("元", "角", 10), ("升", "毫升", 1000), ("吨", "千克", 1000),
                ("天", "小时", 24)]
WEEKDAYS = ["一", "二", "三", "四", "五", "六", "日"]


def shopping_change(rng):
    name = rng.choice(NAMES)
    (item, unit), (other, other_unit) = rng.sample(STATIONERY, 2)
    count, price, other_price = rng.randint(2, 9), rng.randint(2, 9), rng.randint(5, 30)
    spent = count * price + other_price
    money = rng.choice([m for m in (50, 100, 200) if m > spent])
    question = (f"{name}带了{money}元，买了{count}{unit}{item}，每{unit}{price}元，"
                f"又花{other_price}元买了一{other_unit}{other}。{name}还剩多少元？")
    solution = (f"买{item}花了{count}×{price}={count * price}元。\n"
                f"一共花了{count * price}+{other_price}={spent}元。\n"
                f"还剩{money}-{spent}={money - spent}元。\n答：{name}还剩{money - spent}元。")
    return question, solution


def share_with_remainder(rng):
    thing, unit = rng.choice(SHARED_THINGS)
    groups = rng.randint(3, 9)
    total = groups * rng.randint(4, 15) + rng.randint(0, groups - 1)
    each, left = divmod(total, groups)
    question = f"老师买来{total}{unit}{thing}，平均分给{groups}个小组，每个小组分到几{unit}？还剩几{unit}？"
    if left:
        solution = (f"{total}÷{groups}={each}……{left}。\n所以每个小组分到{each}{unit}，还剩{left}{unit}。\n"
                    f"答：每个小组分到{each}{unit}，还剩{left}{unit}。")
    else:
        solution = f"{total}÷{groups}={each}，正好分完。\n答：每个小组分到{each}{unit}，没有剩余。"
    return question, solution


def trip_length(rng):
    vehicle, low, high = rng.choice(VEHICLE_SPEEDS)
    speed, hours = rng.randint(low, high), rng.randint(2, 6)
    remaining = rng.randint(5, 120)
    covered = speed * hours
    question = f"一辆{vehicle}每小时行驶{speed}千米，行驶了{hours}小时后，离终点还有{remaining}千米。全程一共有多少千米？"
    solution = (f"已经行驶了{speed}×{hours}={covered}千米。\n全程是{covered}+{remaining}={covered + remaining}千米。\n"
                f"答：全程一共有{covered + remaining}千米。")
    return question, solution


def relative_age(rng):
    name = rng.choice(NAMES)
    relative, low, high = rng.choice(RELATIVE_GAPS)
    age, gap, years = rng.randint(6, 12), rng.randint(low, high), rng.randint(2, 10)
    question = f"今年{name}{age}岁，{relative}比{name}大{gap}岁。{years}年后，{relative}多少岁？"
    solution = (f"今年{relative}的年龄是{age}+{gap}={age + gap}岁。\n"
                f"{years}年后{relative}的年龄是{age + gap}+{years}={age + gap + years}岁。\n"
                f"答：{years}年后{relative}{age + gap + years}岁。")
    return question, solution


def rectangle(rng):
    field = rng.choice(FIELDS)
    width = rng.randint(3, 20)
    length = width + rng.randint(1, 15)
    perimeter, area = (length + width) * 2, length * width
    question = f"一个长方形{field}长{length}米，宽{width}米。它的周长和面积各是多少？"
    solution = (f"周长是({length}+{width})×2={perimeter}米。\n面积是{length}×{width}={area}平方米。\n"
                f"答：周长是{perimeter}米，面积是{area}平方米。")
    return question, solution


def orchard_percent(rng):
    counted, rest = rng.choice(TREE_PAIRS)
    trees = 20 * rng.randint(5, 30)
    percent = rng.choice([10, 15, 20, 25, 30, 35, 40, 45, 60, 75])
    counted_trees = trees * percent // 100
    question = f"果园里有{trees}棵果树，其中{counted}占{percent}%，其余的是{rest}。{rest}有多少棵？"
    rest_trees = trees - counted_trees
    solution = (f"{counted}有{trees}×{percent}%={counted_trees}棵。\n{rest}有{trees}-{counted_trees}={rest_trees}棵。\n"
                f"答：{rest}有{rest_trees}棵。")
    return question, solution


def pages_left(rng):
    name = rng.choice(NAMES)
    per_day, days = rng.randint(8, 30), rng.randint(3, 9)
    read = per_day * days
    pages = read + rng.randint(10, 150)
    question = f"一本书有{pages}页，{name}每天看{per_day}页，看了{days}天。还剩多少页没有看？"
    solution = f"{days}天看了{per_day}×{days}={read}页。\n还剩{pages}-{read}={pages - read}页。\n答：还剩{pages - read}页没有看。"
    return question, solution


def sum_and_difference(rng):
    smaller = rng.randint(5, 200)
    larger = smaller + rng.randint(1, 100)
    total, gap = larger + smaller, larger - smaller
    question = f"两个数的和是{total}，差是{gap}，这两个数分别是多少？"
    solution = (f"较大的数是({total}+{gap})÷2={larger}。\n较小的数是{total}-{larger}={smaller}。\n"
                f"答：这两个数分别是{larger}和{smaller}。")
    return question, solution


def test_average(rng):
    name, subject = rng.choice(NAMES), rng.choice(SUBJECTS)
    first, second = rng.randint(60, 100), rng.randint(60, 100)
    third = rng.choice([s for s in range(60, 101) if (first + second + s) % 3 == 0])
    total = first + second + third
    question = f"{name}前三次{subject}测验分别得了{first}分、{second}分和{third}分，平均分是多少分？"
    solution = f"三次总分是{first}+{second}+{third}={total}分。\n平均分是{total}÷3={total // 3}分。\n答：平均分是{total // 3}分。"
    return question, solution


def unit_price(rng):
    item, unit = rng.choice(STATIONERY)
    price, bought, wanted = rng.randint(2, 15), rng.randint(2, 8), rng.randint(3, 12)
    question = f"{bought}{unit}{item}一共{bought * price}元，买{wanted}{unit}同样的{item}需要多少元？"
    solution = (f"每{unit}{item}的价格是{bought * price}÷{bought}={price}元。\n"
                f"买{wanted}{unit}需要{price}×{wanted}={price * wanted}元。\n答：需要{price * wanted}元。")
    return question, solution


def chickens_and_rabbits(rng):
    chickens, rabbits = rng.randint(2, 30), rng.randint(2, 30)
    heads, legs = chickens + rabbits, 2 * chickens + 4 * rabbits
    question = f"笼子里有鸡和兔共{heads}只，共有{legs}条腿。鸡和兔各有多少只？"
    solution = (f"假设全是鸡，有{heads}×2={2 * heads}条腿。\n每只兔多2条腿，兔有({legs}-{2 * heads})÷2={rabbits}只。\n"
                f"鸡有{heads}-{rabbits}={chickens}只。\n答：鸡有{chickens}只，兔有{rabbits}只。")
    return question, solution


def trees_along_path(rng):
    gap, intervals = rng.randint(2, 10), rng.randint(5, 40)
    length = gap * intervals
    question = f"在一条长{length}米的小路一边种树，每隔{gap}米种一棵，两端都要种。一共要种多少棵树？"
    solution = (f"{length}÷{gap}={intervals}个间隔。\n两端都种，棵数比间隔数多1，{intervals}+1={intervals + 1}棵。\n"
                f"答：一共要种{intervals + 1}棵树。")
    return question, solution


SCHOOL_MATH_TEMPLATES = [shopping_change, share_with_remainder, trip_length, relative_age, rectangle,
                         orchard_percent, pages_left, sum_and_difference, test_average, unit_price,
                         chickens_and_rabbits, trees_along_path]


def school_math_record(rng):
    question, solution = rng.choice(SCHOOL_MATH_TEMPLATES)(rng)
    return {"instruction": f"题目：{question}", "input": "", "output": solution}


def unit_conversion(rng):
    large, small, factor = rng.choice(UNIT_FACTORS)
    if rng.random() < 0.5:
        whole = rng.randint(1, 50)
        return f"把下面的数量换算成{small}。", f"{whole}{large}", f"{whole}{large}={whole * factor}{small}"
    whole = rng.randint(2, 30)
    given = f"{whole * factor}{small}"
    return f"请把下面的数量换算成以{large}为单位。", given, f"{given}={whole}{large}"


def sort_numbers(rng):
    numbers = rng.sample(range(1, 100), rng.randint(4, 7))
    descending = rng.random() < 0.5
    order = "从大到小" if descending else "从小到大"
    return (f"将下列数字按{order}的顺序排列。", "、".join(map(str, numbers)),
            "、".join(map(str, sorted(numbers, reverse=descending))))


def reverse_words(rng):
    words = rng.sample(rng.choice(list(CATEGORIES.values())), rng.randint(3, 6))
    return "把下面词语的顺序倒过来，仍用顿号隔开。", "、".join(words), "、".join(reversed(words))


def pick_category(rng):
    wanted, other = rng.sample(list(CATEGORIES), 2)
    words = rng.sample(CATEGORIES[wanted], rng.randint(1, 3)) + rng.sample(CATEGORIES[other], rng.randint(2, 3))
    rng.shuffle(words)
    members = [w for w in words if w in CATEGORIES[wanted]]
    return f"下面的词语中，哪些属于{wanted}？", "、".join(words), f"属于{wanted}的有：{'、'.join(members)}。"


def table_fact(rng, facts, phrasings):
    """Ask about one entry of a table the generator holds; each phrasing is (instruction, input, output)."""
    key = rng.choice(sorted(facts))
    return tuple(part.format(key=key, value=facts[key]) for part in rng.choice(phrasings))


FACT_QUESTIONS = [
    (CAPITALS, [("{key}的首都是哪座城市？", "", "{key}的首都是{value}。"),
                ("请告诉我{key}的首都。", "", "{key}的首都是{value}。"),
                ("{value}是哪个国家的首都？", "", "{value}是{key}的首都。")]),
    (ELEMENTS, [("{key}元素的化学符号是什么？", "", "{key}元素的化学符号是{value}。"),
                ("下面的化学符号代表哪种元素？", "{value}", "{value}代表{key}元素。")]),
    (ENGLISH, [("把下面的词语翻译成英文。", "{key}", "{value}"),
               ("把下面的英文单词翻译成中文。", "{value}", "{key}")]),
    (ANTONYMS, [("写出下面词语的反义词。", "{key}", "“{key}”的反义词是“{value}”。"),
                ("写出下面词语的反义词。", "{value}", "“{value}”的反义词是“{key}”。")]),
]


def odd_or_even(rng):
    number = rng.randint(1, 9999)
    return "判断下面的数是奇数还是偶数。", str(number), f"{number}是{'偶数' if number % 2 == 0 else '奇数'}。"


def arithmetic(rng):
    left = rng.randint(10, 99)
    right = rng.randint(2, left)
    symbol, value = rng.choice([("+", left + right), ("-", left - right), ("×", left * right)])
    return "计算下面的算式。", f"{left} {symbol} {right}", f"{left} {symbol} {right} = {value}"


def weekday_after(rng):
    today, days = rng.randrange(7), rng.randint(1, 30)
    return (f"今天是星期{WEEKDAYS[today]}，再过{days}天是星期几？", "",
            f"再过{days}天是星期{WEEKDAYS[(today + days) % 7]}。")


def english_word_operation(rng):
    word = ENGLISH[rng.choice(sorted(ENGLISH))]
    instruction, answer = rng.choice([("把下面的英文单词全部改写成大写字母。", word.upper()),
                                      ("把下面的英文单词的字母顺序倒过来写。", word[::-1]),
                                      ("下面的英文单词有几个字母？", f"{word}有{len(word)}个字母。")])
    return instruction, word, answer


ALPACA_ZH_TEMPLATES = [unit_conversion, sort_numbers, reverse_words, pick_category, odd_or_even, arithmetic,
                       weekday_after, english_word_operation,
                       *(functools.partial(table_fact, facts=facts, phrasings=phrasings)
                         for facts, phrasings in FACT_QUESTIONS)]


def alpaca_zh_record(rng):
    instruction, given, answer = rng.choice(ALPACA_ZH_TEMPLATES)(rng)
    return {"instruction": instruction, "input": given, "output": answer}


def distinct_records(make_record, seed, count):
    """Draw records until ``count`` distinct (instruction, input) pairs exist, in draw order."""
    rng = random.Random(seed)
    records, seen = [], set()
    while len(records) < count:
        record = make_record(rng)
        key = (record["instruction"], record["input"])
        if key not in seen:
            seen.add(key)
            records.append(record)
    return records


def write_jsonl(path, records):
    """Write one sorted-key JSON object per line, atomically (temp file in the same folder, then replace)."""
    handle, temp_path = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            for record in records:
                stream.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the School_math and Alpaca_Chinese stand-ins.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write into (default: the folder of this script)")
    out = parser.parse_args(argv).out
    if not out.is_dir():
        parser.error(f"--out {out} is not an existing folder")
    for name, make_record, seed in (("school_math_standin.jsonl", school_math_record, SCHOOL_MATH_SEED),
                                    ("alpaca_zh_standin.jsonl", alpaca_zh_record, ALPACA_ZH_SEED)):
        write_jsonl(out / name, distinct_records(make_record, seed, RECORDS_PER_SET))


if __name__ == "__main__":
    main()
