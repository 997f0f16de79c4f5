"""The Alpaca_Chinese stand-in's task families (read by make_standins.py; the data README says what they are).

Each family draws one task from a seeded ``random.Random`` and returns (instruction, input, output): an instruction,
the material to work on (empty for about a fifth of the tasks, as in Alpaca) and one answer that can be checked
exactly (adaq_lora/scoring/accuracy.py, kind "exact"). Some are one lookup (a capital, an antonym); the rest take
two or more operations (order of operations, a date or a time span, the second largest of a list, a number in
Chinese numerals, a list without its repeats), so that a small model does not learn them all from 800 examples.
"""
import functools

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


CHINESE_DIGITS = "零一二三四五六七八九"
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def chinese_numeral(number):
    """1-9999 in Chinese numerals as schools write them: 305 → 三百零五, 1020 → 一千零二十, 15 → 十五."""
    digits = [int(d) for d in f"{number:04d}"]
    text, zero = "", False
    for digit, unit in zip(digits, ["千", "百", "十", ""]):
        if digit == 0:
            zero = bool(text)
            continue
        text += ("零" if zero else "") + CHINESE_DIGITS[digit] + unit
        zero = False
    return text[1:] if text.startswith("一十") else text


def write_in_chinese(rng):
    number = rng.choice([rng.randint(11, 99), rng.randint(100, 999), rng.randint(1000, 9999)])
    return "把下面的数字写成汉字。", str(number), chinese_numeral(number)


def order_of_operations(rng):
    a, b, c = rng.randint(2, 50), rng.randint(2, 12), rng.randint(2, 9)
    expression, value = rng.choice([(f"{a} + {b} × {c}", a + b * c), (f"({a} + {b}) × {c}", (a + b) * c),
                                    (f"{a * c + b * c} - {b} × {c}", a * c)])
    return "按运算顺序计算下面的算式。", expression, f"{expression} = {value}"


def list_statistic(rng):
    numbers = rng.sample(range(1, 100), rng.randint(4, 6))
    instruction, answer = rng.choice([("找出下列数中最大的数。", f"最大的数是{max(numbers)}。"),
                                      ("找出下列数中最小的数。", f"最小的数是{min(numbers)}。"),
                                      ("下列数中第二大的是哪个？", f"第二大的数是{sorted(numbers)[-2]}。"),
                                      ("计算下列数的和。", f"和是{sum(numbers)}。")])
    return instruction, "、".join(map(str, numbers)), answer


def next_in_sequence(rng):
    start, step, count = rng.randint(1, 30), rng.randint(2, 12), rng.randint(4, 5)
    terms = [start + step * i for i in range(count + 1)]
    if rng.random() < 0.3:
        terms = [start * 2 ** i for i in range(count + 1)]
    return "找出规律，写出下一个数。", "、".join(map(str, terms[:-1])), str(terms[-1])


def time_span(rng):
    start = rng.randint(6 * 60, 12 * 60)
    minutes = rng.randint(15, 300)
    end = start + minutes
    return (f"从{start // 60}:{start % 60:02d}到{end // 60}:{end % 60:02d}，一共经过了多少分钟？", "",
            f"一共经过了{minutes}分钟。")


def date_after(rng):
    month, days = rng.randint(1, 12), rng.randint(3, 40)
    day = rng.randint(1, MONTH_DAYS[month - 1])
    new_month, new_day = month, day + days
    while new_day > MONTH_DAYS[(new_month - 1) % 12]:
        new_day -= MONTH_DAYS[(new_month - 1) % 12]
        new_month = new_month % 12 + 1
    return f"在一个平年里，{month}月{day}日再过{days}天是几月几日？", "", f"是{new_month}月{new_day}日。"


def without_repeats(rng):
    values = rng.sample(range(1, 30), rng.randint(4, 6))
    numbers = values + rng.sample(values, rng.randint(2, 3))
    rng.shuffle(numbers)
    kept = list(dict.fromkeys(numbers))
    return "去掉下面数字中重复的，按第一次出现的顺序写出来。", "、".join(map(str, numbers)), "、".join(map(str, kept))


def alphabetical(rng):
    words = rng.sample(sorted(ENGLISH.values()), rng.randint(3, 5))
    return "把下列英文单词按字母表顺序排列。", ", ".join(words), ", ".join(sorted(words))


def letter_count(rng):
    word = rng.choice([w for w in ENGLISH.values() if len(set(w)) < len(w)])
    letter = max(set(word), key=lambda ch: (word.count(ch), ch))
    return f"下面的英文单词中字母{letter}出现了几次？", word, f"字母{letter}出现了{word.count(letter)}次。"


ALPACA_ZH_FAMILIES = [unit_conversion, sort_numbers, reverse_words, pick_category, odd_or_even, arithmetic,
                      weekday_after, english_word_operation, write_in_chinese, order_of_operations, list_statistic,
                      next_in_sequence, time_span, date_after, without_repeats, alphabetical, letter_count,
                      *(functools.partial(table_fact, facts=facts, phrasings=phrasings)
                        for facts, phrasings in FACT_QUESTIONS)]


def alpaca_zh_record(rng):
    instruction, given, answer = rng.choice(ALPACA_ZH_FAMILIES)(rng)
    return {"instruction": instruction, "input": given, "output": answer}
